# SPDX-License-Identifier: Apache-2.0
"""Fetch, verify and unpack function code into content-addressed, versioned directories.

A deployment prepares every function's code *before* anything switches: an S3 object (read
with aiobotocore), a local zip, or a local directory is checked against its Sha256, unpacked
into `{code_root}/{sha256}/` through a temporary directory and a rename (so a directory that
exists is always complete), and only then can workers start from it. A new version never
touches the directory a running worker uses, and the same code is unpacked once.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edge.errors import EdgeError
from edge.workers.spec import CodeRef

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


class CodeFetchError(EdgeError):
    """A function's code could not be fetched, verified or unpacked."""

    def __init__(self, function_arn: str, problem: str) -> None:
        self.function_arn = function_arn
        self.problem = problem
        super().__init__(f"code of function {function_arn}: {problem}")


async def prepare_code(
    function_arn: str, code: CodeRef, *, code_root: Path, read_s3: S3Reader | None = None
) -> Path:
    """Make the function's code available under `code_root`; return its directory."""
    parts = urlsplit(code.uri)
    path = Path(unquote(parts.path))
    if parts.scheme == "file" and await asyncio.to_thread(path.is_dir):
        return await asyncio.to_thread(_copy_dir, function_arn, path, code, code_root)
    if parts.scheme == "file":
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
    if code.sha256 is not None and digest != code.sha256:
        raise CodeFetchError(function_arn, f"Sha256 mismatch: expected {code.sha256}, got {digest}")
    return await asyncio.to_thread(_unpack_zip, function_arn, data, code_root / digest)


def _describe(exc: BaseException) -> str:
    code = (
        getattr(exc, "response", {}).get("Error", {}).get("Code")
        if hasattr(exc, "response")
        else None
    )
    return str(code) if code else type(exc).__name__


def _read_file(function_arn: str, path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_ZIP_BYTES:
            raise CodeFetchError(function_arn, f"{path} is larger than {MAX_ZIP_BYTES} bytes")
        return path.read_bytes()
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
    digest = _tree_digest(function_arn, source)
    if code.sha256 is not None and digest != code.sha256:
        raise CodeFetchError(function_arn, f"Sha256 mismatch: expected {code.sha256}, got {digest}")
    return _publish(
        code_root / digest,
        lambda tmp: shutil.copytree(source, tmp, symlinks=False, dirs_exist_ok=True),
        function_arn,
    )


def _tree_digest(function_arn: str, root: Path) -> str:
    """SHA-256 over every file's relative path and contents, in a stable order."""
    digest = hashlib.sha256()
    total = 0
    try:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            total += len(data)
            if total > MAX_UNZIPPED_BYTES:
                raise CodeFetchError(
                    function_arn, f"{root} holds more than {MAX_UNZIPPED_BYTES} bytes"
                )
            rel = path.relative_to(root).as_posix().encode()
            digest.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    except OSError as exc:
        raise CodeFetchError(function_arn, f"can't read {root}: {exc.strerror}") from None
    return digest.hexdigest()


def _publish(target: Path, fill: Callable[[Path], object], function_arn: str) -> Path:
    """Fill a temporary directory, then rename it to `target` (complete or absent)."""
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # A directory of its own per call: functions sharing one package are prepared
        # concurrently, and two unpacks must never fill (or delete) the same temporary directory.
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise CodeFetchError(function_arn, f"can't unpack into {target}: {exc.strerror}") from None
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; workers may run as another user
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
