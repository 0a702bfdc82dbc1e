# SPDX-License-Identifier: Apache-2.0
"""Disk faults for a core's state directory: a real tmpfs, or an injected OSError as a fallback.

The real way needs CAP_SYS_ADMIN (root in CI): the state directory is a tiny tmpfs of its own,
filled up for ENOSPC and remounted read-only for EROFS. Where mounting is not allowed, the core
runs in this process instead and the fault is an OSError raised from the one function every
state file write goes through (`edge.fsutil.write_new_file`); the project allows mocks for disk
faults only. `EDGE_TEST_DISK_FAULTS=mount|mock` forces one way; by default a probe decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import structlog

from edge import fsutil
from edge.config import load_config
from edge.core import Core
from edge.fixtures.core import CoreProcess
from edge.log import configure_logging

#: Big enough for the key, the store, the inbox and the history; small enough to fill at once.
TMPFS_SIZE = "1m"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


def can_mount() -> bool:
    """Tell whether this process may mount a tmpfs (probe: mount one, then unmount it)."""
    with tempfile.TemporaryDirectory(prefix="edge-mount-probe-") as where:
        if _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", where).returncode != 0:
            return False
        unmounted = _run("umount", where).returncode == 0
        assert unmounted, f"the probe could not unmount {where}"
        return True


def fault_path() -> str:
    """Which way disk faults are made here: "mount" (real tmpfs) or "mock" (injected OSError)."""
    forced = os.environ.get("EDGE_TEST_DISK_FAULTS", "")
    if forced:
        assert forced in {"mount", "mock"}, f"EDGE_TEST_DISK_FAULTS={forced!r}: mount or mock"
        return forced
    return "mount" if can_mount() else "mock"


class DiskFaults:
    """Disk full and read-only faults on one core's state directory."""

    #: "mount" or "mock", for the report.
    kind: str

    def prepare(self, state_dir: Path) -> None:
        """Set the state directory up before `edge init` (mount it, for the real way)."""

    def fill(self) -> None:
        """Make every new write in the state directory fail with ENOSPC."""
        raise NotImplementedError

    def read_only(self) -> None:
        """Make every write in the state directory fail with EROFS."""
        raise NotImplementedError

    def clear(self) -> None:
        """Undo `fill` or `read_only`."""
        raise NotImplementedError

    def close(self) -> None:
        """Undo everything `prepare` did."""

    def core(self, config: Path, log_path: Path) -> CoreProcess:
        """The core to run: a real `edge run` process unless the fault must be injected."""
        return CoreProcess(config=config, log_path=log_path)


@dataclass
class TmpfsFaults(DiskFaults):
    """Real faults: a tmpfs of TMPFS_SIZE as the state directory, filled or remounted ro."""

    kind: str = "mount"
    state_dir: Path | None = None
    filler: Path | None = None

    def prepare(self, state_dir: Path) -> None:
        """Mount a private tmpfs (mode 0700) on the state directory."""
        state_dir.mkdir()
        done = _run(
            "mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", state_dir
        )
        assert done.returncode == 0, done.stderr
        self.state_dir = state_dir

    def fill(self) -> None:
        """Write a file until the filesystem answers ENOSPC: a real full disk."""
        assert self.state_dir is not None
        self.filler = self.state_dir / "filler"
        chunk = b"\0" * 4096
        with self.filler.open("wb", buffering=0) as out:
            try:
                while True:
                    out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        # Down to the last page: a page-sized write anywhere now fails too.
        with self.filler.open("ab", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0")

    def read_only(self) -> None:
        """Remount the tmpfs read-only."""
        assert self.state_dir is not None
        done = _run("mount", "-o", "remount,ro", str(self.state_dir))
        assert done.returncode == 0, done.stderr

    def clear(self) -> None:
        """Remount read-write and remove the filler."""
        assert self.state_dir is not None
        done = _run("mount", "-o", "remount,rw", str(self.state_dir))
        assert done.returncode == 0, done.stderr
        if self.filler is not None:
            self.filler.unlink()
            self.filler = None

    def close(self) -> None:
        """Unmount the tmpfs (lazily if a straggler still holds it)."""
        if self.state_dir is None:
            return
        if _run("umount", str(self.state_dir)).returncode != 0:
            done = _run("umount", "-l", str(self.state_dir))
            assert done.returncode == 0, done.stderr
        self.state_dir = None


@dataclass
class InjectedFaults(DiskFaults):
    """Fallback: an OSError from `edge.fsutil.write_new_file` for files in the state directory."""

    kind: str = "mock"
    state_dir: Path | None = None
    _patch: Any = None

    def prepare(self, state_dir: Path) -> None:
        """Remember which directory the faults are for."""
        self.state_dir = state_dir.resolve()

    def _fail_with(self, code: int) -> None:
        real = fsutil.write_new_file
        state_dir = self.state_dir

        def write_new_file(
            path: Path, data: bytes, *, mode: int = fsutil.PRIVATE_FILE_MODE
        ) -> None:
            if state_dir is not None and path.resolve().is_relative_to(state_dir):
                raise OSError(code, os.strerror(code), str(path))
            real(path, data, mode=mode)

        self.clear()
        self._patch = mock.patch.object(fsutil, "write_new_file", write_new_file)
        self._patch.start()

    def fill(self) -> None:
        """Every new state file fails with ENOSPC."""
        self._fail_with(errno.ENOSPC)

    def read_only(self) -> None:
        """Every new state file fails with EROFS."""
        self._fail_with(errno.EROFS)

    def clear(self) -> None:
        """Writes work again."""
        if self._patch is not None:
            self._patch.stop()
            self._patch = None

    def close(self) -> None:
        """Remove the patch if a test left it on."""
        self.clear()

    def core(self, config: Path, log_path: Path) -> CoreProcess:
        """The core, run in this process so that the patch reaches it."""
        return InProcessCore(config=config, log_path=log_path)


@dataclass
class InProcessCore(CoreProcess):
    """The `Core` on a thread of the test process, logging JSON lines to `log_path`."""

    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _errors: list[BaseException] = field(default_factory=list)
    _saved: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        """Configure logging to the log file and run the core on a thread."""
        config = load_config(self.config)
        stream = self.log_path.open("a", buffering=1)
        root = logging.getLogger()
        self._saved = {
            "structlog": structlog.get_config(),
            "handlers": root.handlers[:],
            "level": root.level,
            "stream": stream,
        }
        configure_logging(level="debug", fmt="json", stream=stream)
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready.set()
            async with Core(config) as core:
                await core.serve_forever(self._stop)

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # noqa: BLE001 - reported by stop()
                self._errors.append(exc)
            finally:
                ready.set()

        self._thread = threading.Thread(target=target, name="in-process-core", daemon=True)
        self._thread.start()
        ready.wait(30)

    def stop(self, sig: int = 0, timeout: float = 15) -> int:  # noqa: ARG002 - same signature
        """Stop the core, restore logging, and fail if the core ended with an error."""
        thread, self._thread = self._thread, None
        if thread is None:
            return 0
        if self._loop is not None and self._stop is not None and thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout)
        structlog.configure(**self._saved["structlog"])
        root = logging.getLogger()
        root.handlers[:] = self._saved["handlers"]
        root.setLevel(self._saved["level"])
        stream: io.TextIOBase = self._saved["stream"]
        stream.close()
        assert not thread.is_alive(), "the in-process core did not stop"
        assert not self._errors, f"the in-process core failed: {self._errors!r}"
        return 0

    @property
    def running(self) -> bool:
        """Whether the core's thread is alive."""
        return self._thread is not None and self._thread.is_alive()


def make_faults(kind: str) -> DiskFaults:
    """The faults of the given kind ("mount" or "mock")."""
    return TmpfsFaults() if kind == "mount" else InjectedFaults()


@contextlib.contextmanager
def disk_faults(kind: str) -> Iterator[DiskFaults]:
    """Faults of that kind, always undone (unmounted) on the way out, even after a failure."""
    faults = make_faults(kind)
    try:
        yield faults
    finally:
        faults.close()
