# SPDX-License-Identifier: Apache-2.0
"""Fetch, verify and unpack function code into content-addressed, versioned directories.

A deployment prepares every function's code *before* anything switches: an S3 object (read
with aiobotocore), a local zip, or a local directory is checked against its Sha256, unpacked
into `{code_root}/{sha256}/` through a temporary directory and a rename (so a directory that
exists is always complete), and only then can workers start from it. A new version never
touches the directory a running worker uses, and the same code is unpacked once.

Whatever is copied lands where every function can read it, so `file://` code is read only from
under `[workers] local_code_dirs` (none by default) and never from a path the core hides from
its workers (`LocalCodePolicy`), after resolving `..` and symbolic links. A directory is copied
through directory descriptors without following any link, so a link planted in an allowed tree
can't reach outside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from edge.errors import CodeFetchError, EdgeError, LocalCodeRefusedError
from edge.log import get_logger
from edge.workers.spec import CodeRef

if TYPE_CHECKING:
    from edge.config import Config

#: V1 limits a Lambda package to 50 MB zipped and 250 MB unzipped; the same bounds stop a zip
#: bomb or a runaway download from filling the device.
MAX_ZIP_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
MAX_ZIP_ENTRIES = 20000

S3Reader = Callable[[str, str], Awaitable[bytes]]

#: What zipfile raises while extracting an archive whose directory reads fine but whose data
#: doesn't: a bad CRC (also how an entry larger than its declared size shows), a corrupt or
#: truncated stream, an encrypted entry, an unsupported compression method.
_DAMAGED_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@dataclass(frozen=True, slots=True)
class LocalCodePolicy:
    """Where `file://` code may be read from: under `allowed`, never at, in or around `hidden`.

    Both hold real paths (links and `..` resolved), and so does every path checked against
    them, so neither a `..` nor a symbolic link can carry a URI from an allowed directory into
    the state directory. The default allows nothing: `file://` code is refused.
    """

    allowed: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()

    @classmethod
    def create(cls, *, allowed: Iterable[Path], hidden: Iterable[Path]) -> LocalCodePolicy:
        """Resolve the paths once, when the core starts."""
        return cls(allowed=tuple(_real(p) for p in allowed), hidden=tuple(_real(p) for p in hidden))

    @classmethod
    def from_config(cls, config: Config) -> LocalCodePolicy:
        """`[workers] local_code_dirs`, minus everything the core hides from its workers."""
        # Imported here: the sandbox module needs the landlock and PKCS#11 modules, which a
        # caller preparing S3 code alone never does.
        from edge.workers.sandbox import hidden_paths  # noqa: PLC0415

        return cls.create(allowed=config.workers.local_code_dirs, hidden=hidden_paths(config))

    def check(self, function_arn: str, path: Path) -> Path:
        """Return the real path of `file://` code that may be copied.

        Raises:
            LocalCodeRefusedError: It is outside every allowed directory, or is, is inside or
                holds a hidden path. The message names the key that allows local code.
        """
        real = _real(path)
        if not any(real.is_relative_to(root) for root in self.allowed):
            allowed = ", ".join(str(p) for p in self.allowed) or "none"
            raise LocalCodeRefusedError(
                function_arn,
                f"file:// code at {path} is outside [workers] local_code_dirs (now: {allowed}); "
                "add the directory that holds it to [workers] local_code_dirs in the core's "
                "config, or publish the code to S3",
            )
        for hidden in self.hidden:
            if real.is_relative_to(hidden) or hidden.is_relative_to(real):
                raise LocalCodeRefusedError(
                    function_arn,
                    f"file:// code at {path} reaches {hidden}, which the core hides from "
                    "functions (its state, keys, config or credentials); point Code.Uri at a "
                    "directory that holds only function code",
                )
        return real


async def prepare_code(
    function_arn: str,
    code: CodeRef,
    *,
    code_root: Path,
    read_s3: S3Reader | None = None,
    local: LocalCodePolicy | None = None,
) -> Path:
    """Make the function's code available under `code_root`; return its directory.

    Raises:
        LocalCodeRefusedError: `file://` code that `local` (default: none allowed) refuses.
        CodeFetchError: The code can't be fetched, doesn't match its Sha256, or isn't a valid
            package.
    """
    parts = urlsplit(code.uri)
    if parts.scheme == "file":
        path = (local or LocalCodePolicy()).check(function_arn, Path(unquote(parts.path)))
        if await asyncio.to_thread(path.is_dir):
            return await asyncio.to_thread(_copy_dir, function_arn, path, code, code_root)
        data = await asyncio.to_thread(_read_file, function_arn, path)
    elif read_s3 is None:
        raise CodeFetchError(function_arn, "s3:// code needs the core's S3 access")
    else:
        try:
            data = await read_s3(parts.netloc, parts.path.lstrip("/"))
        except EdgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any S3 failure fails the deployment
            raise CodeFetchError(
                function_arn, f"can't fetch {code.uri}: {_describe(exc)}"
            ) from None
    digest = hashlib.sha256(data).hexdigest()
    _check_digest(function_arn, code, digest)
    return await asyncio.to_thread(_unpack_zip, function_arn, data, code_root / digest)


def _check_digest(function_arn: str, code: CodeRef, digest: str) -> None:
    if code.sha256 is not None and digest != code.sha256:
        raise CodeFetchError(function_arn, f"Sha256 mismatch: expected {code.sha256}, got {digest}")


def _describe(exc: BaseException) -> str:
    code = (
        getattr(exc, "response", {}).get("Error", {}).get("Code")
        if hasattr(exc, "response")
        else None
    )
    return str(code) if code else type(exc).__name__


def _read_file(function_arn: str, path: Path) -> bytes:
    try:
        # No link followed (the path was resolved when checked), and a FIFO can't block us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CodeFetchError(function_arn, f"can't read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CodeFetchError(function_arn, f"{path} is not a regular file")
        if info.st_size > MAX_ZIP_BYTES:
            raise CodeFetchError(function_arn, f"{path} is larger than {MAX_ZIP_BYTES} bytes")
        try:
            return file.read(MAX_ZIP_BYTES + 1)
        except OSError as exc:
            raise CodeFetchError(function_arn, f"can't read {path}: {exc.strerror}") from None


def _unpack_zip(function_arn: str, data: bytes, target: Path) -> Path:
    if target.is_dir():
        return target
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise CodeFetchError(function_arn, "the code is not a zip file") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ZIP_ENTRIES:
            raise CodeFetchError(function_arn, f"the zip has more than {MAX_ZIP_ENTRIES} entries")
        if sum(e.file_size for e in entries) > MAX_UNZIPPED_BYTES:
            raise CodeFetchError(
                function_arn, f"the zip unpacks to more than {MAX_UNZIPPED_BYTES} bytes"
            )
        for entry in entries:
            name = entry.filename
            # Paths that climb out of the target, or links, could overwrite anything on disk.
            if name.startswith("/") or ".." in Path(name).parts or "\\" in name:
                raise CodeFetchError(
                    function_arn, f"the zip entry {name[:80]!r} escapes the package"
                )
            if stat.S_ISLNK(entry.external_attr >> 16):
                raise CodeFetchError(
                    function_arn, f"the zip entry {name[:80]!r} is a symbolic link"
                )
        return _publish(target, lambda tmp: _extract(function_arn, archive, tmp), function_arn)


def _extract(function_arn: str, archive: zipfile.ZipFile, tmp: Path) -> None:
    try:
        archive.extractall(tmp)
    except _DAMAGED_ZIP_ERRORS as exc:
        raise CodeFetchError(function_arn, f"the zip is damaged: {str(exc)[:120]}") from None


def _copy_dir(function_arn: str, source: Path, code: CodeRef, code_root: Path) -> Path:
    """Copy a directory's regular files into a temporary directory, then name it by digest.

    The digest is taken from the copy, not the source, so what runs is exactly what was
    checked even if the source changes meanwhile.
    """
    tmp = _temp_dir(code_root, ".copy.tmp-", function_arn)
    try:
        files = _copy_tree(function_arn, source, tmp)
        digest = _tree_digest(function_arn, tmp, files)
        _check_digest(function_arn, code, digest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    target = code_root / digest
    if target.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    return _install(tmp, target, lambda _tmp: None, function_arn)


def _copy_tree(function_arn: str, source: Path, target: Path) -> list[Path]:
    """Copy every regular file under `source`; return their relative paths.

    `os.fwalk` opens each directory relative to its parent's descriptor without following
    links, so a directory swapped for a link mid-copy can't redirect it. A link is refused
    rather than skipped: a zip may not hold one either, and a tree silently missing a file
    would fail later, far from the cause. Sockets, FIFOs and devices are skipped and logged.
    """
    files: list[Path] = []
    total = 0
    try:
        for top, dirs, names, dir_fd in os.fwalk(source, follow_symlinks=False):
            rel_dir = Path(top).relative_to(source)
            modes = {
                name: os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
                for name in [*dirs, *names]
            }
            for name, mode in modes.items():
                if stat.S_ISLNK(mode):
                    raise CodeFetchError(
                        function_arn,
                        f"{Path(top) / name} is a symbolic link; local code may hold only "
                        "files and directories: replace the link with what it points to",
                    )
            for name in dirs:
                (target / rel_dir / name).mkdir(mode=0o755)
            for name in names:
                rel = rel_dir / name
                # Checked before opening too: opening a device can have effects of its own.
                size = _copy_file(dir_fd, name, target / rel) if stat.S_ISREG(modes[name]) else None
                if size is None:
                    get_logger("workers").warning(
                        "code.special_file_skipped",
                        function_arn=function_arn,
                        path=str(Path(top) / name),
                    )
                    continue
                files.append(rel)
                total += size
                if total > MAX_UNZIPPED_BYTES:
                    raise CodeFetchError(
                        function_arn, f"{source} holds more than {MAX_UNZIPPED_BYTES} bytes"
                    )
    except OSError as exc:
        raise CodeFetchError(function_arn, f"can't read {source}: {exc.strerror}") from None
    return files


def _copy_file(dir_fd: int, name: str, dest: Path) -> int | None:
    """Copy one regular file (opened without following links); None if it isn't one (now)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as src:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return None
        with dest.open("xb") as out:
            shutil.copyfileobj(src, out)
        # The owner's execute bit survives (a bundled tool); nothing else of the source's mode.
        dest.chmod(0o755 if mode & stat.S_IXUSR else 0o644)
        return dest.stat().st_size


def _tree_digest(function_arn: str, root: Path, files: list[Path]) -> str:
    """SHA-256 over every file's relative path and contents, in a stable order."""
    digest = hashlib.sha256()
    try:
        for rel in sorted(files):
            data = (root / rel).read_bytes()
            name = rel.as_posix().encode()
            digest.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)
    except OSError as exc:
        raise CodeFetchError(function_arn, f"can't read {root}: {exc.strerror}") from None
    return digest.hexdigest()


def _publish(target: Path, fill: Callable[[Path], object], function_arn: str) -> Path:
    """Fill a temporary directory, then rename it to `target` (complete or absent)."""
    if target.is_dir():
        return target
    # A directory of its own per call: functions sharing one package are prepared
    # concurrently, and two unpacks must never fill (or delete) the same temporary directory.
    tmp = _temp_dir(target.parent, f".{target.name}.tmp-", function_arn)
    return _install(tmp, target, fill, function_arn)


def _temp_dir(parent: Path, prefix: str, function_arn: str) -> Path:
    try:
        parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; workers may run as another user
    except OSError as exc:
        raise CodeFetchError(function_arn, f"can't unpack into {parent}: {exc.strerror}") from None
    return tmp


def _install(tmp: Path, target: Path, fill: Callable[[Path], object], function_arn: str) -> Path:
    """Fill `tmp` and rename it to `target`; `tmp` is gone afterwards, whatever happens."""
    try:
        fill(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.is_dir():  # another deployment unpacked the same code meanwhile
            return target
        raise CodeFetchError(function_arn, f"can't unpack into {target}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-filled directory behind
        raise
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target
