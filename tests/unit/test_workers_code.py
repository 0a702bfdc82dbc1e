# SPDX-License-Identifier: Apache-2.0
"""edge.workers.code: fetching, verifying and unpacking function code, and what it refuses."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import shutil
import socket
import stat
import struct
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError

from edge.errors import CodeFetchError, EdgeError, LocalCodeRefusedError
from edge.workers import code as code_module
from edge.workers.code import LocalCodePolicy
from edge.workers.code import prepare_code as prepare_with_policy
from edge.workers.spec import CodeRef

ARN = "arn:aws:lambda:us-west-2:123456789012:function:sensor:1"
#: Most tests here are about packages, not about where they may come from: they allow file://
#: code anywhere. The policy has tests of its own (`# --- where local code may come from`).
ANYWHERE = LocalCodePolicy.create(allowed=(Path("/"),), hidden=())
prepare_code = functools.partial(prepare_with_policy, local=ANYWHERE)
FILES = {
    "function.py": b"def function_handler(event, context):\n    return event\n",
    "lib/__init__.py": b"",
    "lib/helper.py": b"VALUE = 42\n",
}


def zip_bytes(files: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_zip(path: Path, files: dict[str, bytes] = FILES) -> bytes:
    data = zip_bytes(files)
    path.write_bytes(data)
    return data


def file_ref(path: Path, sha256: str | None = None) -> CodeRef:
    return CodeRef(uri="file://" + quote(str(path)), sha256=sha256)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative POSIX path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Whatever exists under root (hidden temporary directories included)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def code_root(tmp_path: Path) -> Path:
    return tmp_path / "code"


async def refused(code: CodeRef, code_root: Path, **kwargs) -> CodeFetchError:
    """Prepare code that must be refused; return the error."""
    with pytest.raises(CodeFetchError) as info:
        await prepare_code(ARN, code, code_root=code_root, **kwargs)
    assert info.value.function_arn == ARN
    assert str(info.value).startswith(f"code of function {ARN}: ")
    return info.value


# --- local zips --------------------------------------------------------------------------------


async def test_local_zip_is_unpacked_under_its_digest(tmp_path, code_root):
    """A file:// zip is unpacked, files and folders intact, into code_root/<sha256 of the zip>."""
    data = write_zip(tmp_path / "f.zip")
    directory = await prepare_code(ARN, file_ref(tmp_path / "f.zip"), code_root=code_root)
    assert directory == code_root / sha(data)
    assert tree(directory) == FILES
    assert [p.name for p in code_root.iterdir()] == [sha(data)]


async def test_matching_sha256_is_accepted(tmp_path, code_root):
    """A zip whose digest is the declared Sha256 is unpacked."""
    data = write_zip(tmp_path / "f.zip")
    directory = await prepare_code(
        ARN, file_ref(tmp_path / "f.zip", sha(data)), code_root=code_root
    )
    assert directory.name == sha(data)


async def test_path_with_special_characters_is_read(tmp_path, code_root):
    """A percent-encoded file:// URI names the file it encodes."""
    folder = tmp_path / "my functions"
    folder.mkdir()
    write_zip(folder / "v 1%.zip")
    directory = await prepare_code(ARN, file_ref(folder / "v 1%.zip"), code_root=code_root)
    assert tree(directory) == FILES


async def test_same_zip_is_unpacked_once(tmp_path, code_root):
    """Preparing the same code again, for any function, reuses the directory untouched."""
    write_zip(tmp_path / "f.zip")
    first = await prepare_code(ARN, file_ref(tmp_path / "f.zip"), code_root=code_root)
    stamps = {p: p.stat().st_mtime_ns for p in [first, *first.rglob("*")]}
    (first / "function.py").chmod(0o444)  # a second unpack would have to replace it
    write_zip(tmp_path / "copy.zip")
    second = await prepare_code(
        ARN.replace("sensor", "other"), file_ref(tmp_path / "copy.zip"), code_root=code_root
    )
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in [first, *first.rglob("*")]} == stamps
    assert stat.S_IMODE((first / "function.py").stat().st_mode) == 0o444


async def test_different_code_gets_a_different_directory(tmp_path, code_root):
    """A new version of the code never touches the directory of the old one."""
    write_zip(tmp_path / "v1.zip")
    write_zip(tmp_path / "v2.zip", {**FILES, "function.py": b"# v2\n"})
    old = await prepare_code(ARN, file_ref(tmp_path / "v1.zip"), code_root=code_root)
    new = await prepare_code(ARN, file_ref(tmp_path / "v2.zip"), code_root=code_root)
    assert old != new
    assert tree(old) == FILES
    assert tree(new)["function.py"] == b"# v2\n"


async def test_concurrent_preparations_of_the_same_code_agree(tmp_path, code_root):
    """Functions sharing one package, prepared at once, all get the same complete directory."""
    files = {f"pkg/m{i}.py": b"x = %d\n" % i * 50 for i in range(100)}
    write_zip(tmp_path / "shared.zip", files)
    for _ in range(2):
        dirs = await asyncio.gather(
            *(
                prepare_code(
                    f"{ARN}{i}", file_ref(tmp_path / "shared.zip"), code_root=code_root / "r"
                )
                for i in range(8)
            )
        )
        assert len(set(dirs)) == 1
        assert tree(dirs[0]) == files
        assert [p.name for p in (code_root / "r").iterdir()] == [dirs[0].name]
        shutil.rmtree(code_root / "r")


async def test_sha256_mismatch_names_both_digests_and_leaves_nothing(tmp_path, code_root):
    """A zip that isn't the declared one is refused before anything is written."""
    data = write_zip(tmp_path / "f.zip")
    declared = "0" * 64
    error = await refused(file_ref(tmp_path / "f.zip", declared), code_root)
    assert f"expected {declared}" in error.problem
    assert f"got {sha(data)}" in error.problem
    assert leftovers(code_root) == []


async def test_not_a_zip_is_refused(tmp_path, code_root):
    """A file that isn't a zip archive is refused and nothing is unpacked."""
    (tmp_path / "f.zip").write_bytes(b"#!/bin/sh\necho not a zip\n")
    error = await refused(file_ref(tmp_path / "f.zip"), code_root)
    assert "not a zip" in error.problem
    assert leftovers(code_root) == []


async def test_damaged_zip_is_refused_and_leaves_nothing(tmp_path, code_root):
    """A zip whose compressed data is corrupt is a CodeFetchError, with no half-unpacked dir."""
    data = bytearray(zip_bytes({"function.py": b"print('hello')\n" * 200}))
    data[30 + len("function.py") + 2] ^= 0xFF  # inside the first entry's deflate stream
    (tmp_path / "f.zip").write_bytes(bytes(data))
    error = await refused(file_ref(tmp_path / "f.zip"), code_root)
    assert "damaged" in error.problem
    assert leftovers(code_root) == []


async def test_entry_that_lies_about_its_size_is_refused(tmp_path, code_root):
    """An entry declaring fewer bytes than it holds can't unpack past the bomb check."""
    data = bytearray(zip_bytes({"big.bin": b"\0" * 100_000}))
    # Shrink the uncompressed size in the local header (offset 22) and the central directory
    # entry (offset 24): the bomb check sums these declared sizes.
    struct.pack_into("<I", data, 22, 10)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)
    (tmp_path / "f.zip").write_bytes(bytes(data))
    error = await refused(file_ref(tmp_path / "f.zip"), code_root)
    assert "damaged" in error.problem
    assert leftovers(code_root) == []


async def test_missing_file_is_refused(tmp_path, code_root):
    """A file:// URI naming nothing is a CodeFetchError naming the path."""
    error = await refused(file_ref(tmp_path / "absent.zip"), code_root)
    assert "absent.zip" in error.problem
    assert leftovers(code_root) == []


async def test_oversized_zip_file_is_refused(tmp_path, code_root, monkeypatch):
    """A package larger than Lambda's zipped limit is refused before it is read."""
    monkeypatch.setattr(code_module, "MAX_ZIP_BYTES", 100)
    write_zip(tmp_path / "f.zip")
    error = await refused(file_ref(tmp_path / "f.zip"), code_root)
    assert "larger than 100 bytes" in error.problem


@pytest.mark.parametrize(
    "name",
    ["../escaped.py", "lib/../../escaped.py", "{tmp}/escaped.py", "..\\escaped.py", "lib/.."],
)
async def test_entries_escaping_the_package_are_refused(tmp_path, code_root, name):
    """Zip-slip: an entry with an absolute path or `..` is refused and nothing is written."""
    name = name.format(tmp=tmp_path)
    (tmp_path / "f.zip").write_bytes(zip_bytes({"function.py": b"ok", name: b"pwned"}))
    before = leftovers(tmp_path)
    error = await refused(file_ref(tmp_path / "f.zip"), code_root)
    assert "escapes the package" in error.problem
    assert leftovers(tmp_path) == before


async def test_symbolic_link_entry_is_refused(tmp_path, code_root):
    """A zip entry that is a symbolic link is refused: it could point anywhere on the device."""
    link = zipfile.ZipInfo("lib/passwd")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("function.py", b"ok")
        archive.writestr(link, "/etc/passwd")
    (tmp_path / "f.zip").write_bytes(buf.getvalue())
    error = await refused(file_ref(tmp_path / "f.zip"), code_root)
    assert "symbolic link" in error.problem
    assert leftovers(code_root) == []


async def test_zip_bomb_is_refused(tmp_path, code_root, monkeypatch):
    """Entries whose declared sizes sum past the unzipped limit are refused unread."""
    monkeypatch.setattr(code_module, "MAX_UNZIPPED_BYTES", 64 * 1024)
    files = {f"zeros{i}.bin": b"\0" * (20 * 1024) for i in range(4)}  # 80 KiB, ~1 KiB zipped
    write_zip(tmp_path / "bomb.zip", files)
    assert (tmp_path / "bomb.zip").stat().st_size < 2 * 1024
    error = await refused(file_ref(tmp_path / "bomb.zip"), code_root)
    assert "more than 65536 bytes" in error.problem
    assert leftovers(code_root) == []


async def test_zip_at_the_limit_is_accepted(tmp_path, code_root, monkeypatch):
    """Exactly the unzipped limit is still a valid package."""
    monkeypatch.setattr(code_module, "MAX_UNZIPPED_BYTES", 64 * 1024)
    files = {f"zeros{i}.bin": b"\0" * (16 * 1024) for i in range(4)}
    write_zip(tmp_path / "f.zip", files)
    directory = await prepare_code(ARN, file_ref(tmp_path / "f.zip"), code_root=code_root)
    assert tree(directory) == files


async def test_too_many_entries_are_refused(tmp_path, code_root, monkeypatch):
    """A zip with more entries than the limit is refused."""
    monkeypatch.setattr(code_module, "MAX_ZIP_ENTRIES", 3)
    write_zip(tmp_path / "f.zip", {f"m{i}.py": b"" for i in range(4)})
    error = await refused(file_ref(tmp_path / "f.zip"), code_root)
    assert "more than 3 entries" in error.problem


# --- local directories ------------------------------------------------------------------------


def make_dir(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


async def test_local_directory_is_copied_under_its_tree_digest(tmp_path, code_root):
    """A file:// directory is copied to code_root/<digest of its tree>, and the source kept."""
    source = make_dir(tmp_path / "src")
    directory = await prepare_code(ARN, file_ref(source), code_root=code_root)
    assert directory.parent == code_root
    assert len(directory.name) == 64
    assert tree(directory) == FILES
    assert tree(source) == FILES
    # Changing the source afterwards does not change what was prepared.
    (source / "function.py").write_bytes(b"# edited\n")
    assert tree(directory) == FILES


async def test_directory_digest_accepted_as_sha256_and_wrong_one_refused(tmp_path, code_root):
    """The tree digest is the directory's Sha256: it is accepted, any other value refused."""
    source = make_dir(tmp_path / "src")
    digest = (await prepare_code(ARN, file_ref(source), code_root=tmp_path / "probe")).name
    directory = await prepare_code(ARN, file_ref(source, digest), code_root=code_root)
    assert directory == code_root / digest
    wrong = "f" * 64
    error = await refused(file_ref(source, wrong), tmp_path / "other")
    assert f"expected {wrong}" in error.problem
    assert f"got {digest}" in error.problem
    assert leftovers(tmp_path / "other") == []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"function.py": b"# changed\n"}, id="content"),
        pytest.param({"lib/new.py": b""}, id="added-file"),
        pytest.param(
            {"lib/helper.py": None, "lib/helpers.py": FILES["lib/helper.py"]}, id="rename"
        ),
    ],
)
async def test_directory_digest_follows_names_and_contents(tmp_path, code_root, change):
    """Any change of a file's name or content gives the directory another digest."""
    original = await prepare_code(ARN, file_ref(make_dir(tmp_path / "a")), code_root=code_root)
    files = {**FILES, **change}
    changed_source = make_dir(tmp_path / "b", {k: v for k, v in files.items() if v is not None})
    changed = await prepare_code(ARN, file_ref(changed_source), code_root=code_root)
    assert changed.name != original.name
    assert tree(original) == FILES


async def test_same_directory_contents_share_one_copy(tmp_path, code_root):
    """Two directories with the same files are one code version, copied once."""
    first = await prepare_code(ARN, file_ref(make_dir(tmp_path / "a")), code_root=code_root)
    second = await prepare_code(ARN, file_ref(make_dir(tmp_path / "b")), code_root=code_root)
    assert first == second
    assert [p.name for p in code_root.iterdir()] == [first.name]


# --- S3 ---------------------------------------------------------------------------------------


async def test_s3_code_is_read_verified_and_unpacked(code_root):
    """s3:// code is read through read_s3 with bucket and key, checked and unpacked."""
    data = zip_bytes(FILES)
    calls: list[tuple[str, str]] = []

    async def read_s3(bucket: str, key: str) -> bytes:
        calls.append((bucket, key))
        return data

    ref = CodeRef(uri="s3://my-bucket/functions/sensor-1.zip", sha256=sha(data))
    directory = await prepare_code(ARN, ref, code_root=code_root, read_s3=read_s3)
    assert calls == [("my-bucket", "functions/sensor-1.zip")]
    assert directory == code_root / sha(data)
    assert tree(directory) == FILES


async def test_s3_code_with_wrong_sha256_is_refused(code_root):
    """An S3 object that isn't the published package is refused, nothing unpacked."""
    data = zip_bytes(FILES)

    async def read_s3(_bucket: str, _key: str) -> bytes:
        return data

    ref = CodeRef(uri="s3://b/k.zip", sha256="a" * 64)
    error = await refused(ref, code_root, read_s3=read_s3)
    assert f"got {sha(data)}" in error.problem
    assert leftovers(code_root) == []


async def test_s3_code_without_s3_access_is_refused(code_root):
    """Without an S3 reader, s3:// code can't be prepared."""
    error = await refused(CodeRef(uri="s3://b/k.zip", sha256="a" * 64), code_root)
    assert "S3" in error.problem


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        pytest.param(ConnectionResetError("peer reset"), "ConnectionResetError", id="network"),
        pytest.param(
            ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject"),
            "NoSuchKey",
            id="client-error",
        ),
    ],
)
async def test_s3_read_failure_is_a_code_fetch_error(code_root, exc, shown):
    """Any failure to read the object fails with CodeFetchError naming the URI and the cause."""

    async def read_s3(_bucket: str, _key: str) -> bytes:
        raise exc

    error = await refused(CodeRef(uri="s3://b/k.zip", sha256="a" * 64), code_root, read_s3=read_s3)
    assert "can't fetch s3://b/k.zip" in error.problem
    assert shown in error.problem
    assert error.__cause__ is None
    assert leftovers(code_root) == []


async def test_s3_reader_own_errors_pass_through(code_root):
    """An EdgeError the reader raises itself (such as its size limit) reaches the caller as is."""
    own = CodeFetchError("s3://b/k.zip", "the object is larger than 52428800 bytes")

    async def read_s3(_bucket: str, _key: str) -> bytes:
        raise own

    with pytest.raises(EdgeError) as info:
        await prepare_code(
            ARN, CodeRef(uri="s3://b/k.zip", sha256="a" * 64), code_root=code_root, read_s3=read_s3
        )
    assert info.value is own


# --- where local code may come from -----------------------------------------------------------


def policy(allowed: tuple[Path, ...], hidden: tuple[Path, ...] = ()) -> LocalCodePolicy:
    return LocalCodePolicy.create(allowed=allowed, hidden=hidden)


async def refused_local(code: CodeRef, code_root: Path, local: LocalCodePolicy) -> str:
    """Prepare file:// code the policy must refuse; return the message, check nothing landed."""
    with pytest.raises(LocalCodeRefusedError) as info:
        await prepare_with_policy(ARN, code, code_root=code_root, local=local)
    assert leftovers(code_root) == []
    return str(info.value)


async def test_file_code_is_refused_by_default_naming_the_key(tmp_path, code_root):
    """With no [workers] local_code_dirs, file:// code is refused; the message names the key."""
    write_zip(tmp_path / "f.zip")
    ref = file_ref(tmp_path / "f.zip")
    with pytest.raises(LocalCodeRefusedError) as without_policy:
        await prepare_with_policy(ARN, ref, code_root=code_root)
    message = await refused_local(ref, code_root, LocalCodePolicy())
    for shown in (str(without_policy.value), message):
        assert "[workers] local_code_dirs" in shown
    assert leftovers(code_root) == []


async def test_file_code_under_an_allowed_directory_is_used(tmp_path, code_root):
    """A zip and a directory under a configured local_code_dirs entry are prepared."""
    allowed = tmp_path / "code-src"
    allowed.mkdir()
    data = write_zip(allowed / "f.zip")
    local = policy((allowed,))
    zipped = await prepare_with_policy(
        ARN, file_ref(allowed / "f.zip"), code_root=code_root, local=local
    )
    assert zipped == code_root / sha(data)
    copied = await prepare_with_policy(
        ARN, file_ref(make_dir(allowed / "dir")), code_root=code_root, local=local
    )
    assert tree(copied) == FILES


@pytest.mark.parametrize("how", ["dotdot", "link"])
async def test_dotdot_or_link_out_of_an_allowed_directory_is_refused(tmp_path, code_root, how):
    """`..` and a symbolic link are resolved first: they can't lead out of the allowed tree."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    write_zip(outside / "f.zip")
    if how == "dotdot":
        uri = CodeRef(uri=f"file://{allowed}/../outside/f.zip")
    else:
        (allowed / "f.zip").symlink_to(outside / "f.zip")
        uri = file_ref(allowed / "f.zip")
    message = await refused_local(uri, code_root, policy((allowed,)))
    assert "outside [workers] local_code_dirs" in message


@pytest.mark.parametrize("where", ["inside", "parent"])
async def test_hidden_paths_are_refused_even_under_an_allowed_directory(tmp_path, code_root, where):
    """A hidden path, or a directory that holds one, is refused though local_code_dirs covers it."""
    state = tmp_path / "state"
    make_dir(state / "audit", {"audit.jsonl": b"{}\n"})
    source = state / "audit" if where == "inside" else tmp_path
    message = await refused_local(file_ref(source), code_root, policy((tmp_path,), (state,)))
    assert f"reaches {state}" in message


async def test_link_inside_a_copied_directory_is_refused_not_followed(tmp_path, code_root):
    """A symbolic link in a local directory fails the copy naming it; its target isn't read."""
    secret = make_dir(tmp_path / "state", {"core.key": b"PRIVATE"})
    source = make_dir(tmp_path / "src")
    (source / "lib" / "keys").symlink_to(secret)
    error = await refused(file_ref(source), code_root, local=policy((source,), (secret,)))
    assert "lib/keys is a symbolic link" in error.problem
    assert leftovers(code_root) == []


async def test_special_files_in_a_directory_are_skipped(tmp_path, code_root):
    """A FIFO and a socket in a local directory are skipped, never opened; the files copy."""
    source = make_dir(tmp_path / "src")
    os.mkfifo(source / "lib" / "pipe")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(source / "lib" / "sock"))  # the file stays after the close
    directory = await prepare_with_policy(
        ARN, file_ref(source), code_root=code_root, local=policy((source,))
    )
    assert tree(directory) == FILES
    assert not (directory / "lib" / "pipe").exists()
    assert not (directory / "lib" / "sock").exists()


async def test_file_code_naming_a_fifo_is_refused(tmp_path, code_root):
    """A file:// URI naming a FIFO is refused at once rather than blocking the deployment."""
    os.mkfifo(tmp_path / "f.zip")
    error = await refused(file_ref(tmp_path / "f.zip"), code_root, local=policy((tmp_path,)))
    assert "not a regular file" in error.problem
