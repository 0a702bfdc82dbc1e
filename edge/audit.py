# SPDX-License-Identifier: Apache-2.0
"""The local secret-access audit log: who read which secret, when, and whether it was allowed.

Every `get_secret_value` a worker makes is recorded: the function, the secret it named, the
label or version it asked for, the outcome (`allowed`, `denied`, `not_found`, `invalid`) and
when. Never a value: an entry holds ids only, and the id a caller sent for a secret that isn't
deployed goes through the log redactor (and is cut to 256 characters) in case a function
passed a value by mistake.

Reads are served at tens of thousands per second, so recording costs one dict update on the
event loop; a flush (every `flush_seconds`, and at shutdown) appends one JSON line per distinct
(function, secret, label, version, outcome) seen in the interval, with its count and the
first and last time, to `{state_dir}/audit/audit.jsonl` (0600, in a 0700 directory), from a
worker thread so the loop never waits on the disk. Past `max_bytes` the file is rotated to
`audit.jsonl.1` … `audit.jsonl.{backups}` (the oldest is dropped), like logrotate. Appends are
fsynced: an entry that was flushed survives a power cut; a crash loses at most the last
interval's counts.

Reads a worker served from its own cache of answers (`edge.child.cache`) never reach the core:
the worker counts them and reports them in batches, and they are recorded here with
`"self_reported": true`. Only what the function was granted at the time is recorded, but the
counts are the worker's word: a hostile function already holds the value and can skip the
report. A worker's first read of each version always reaches the core and is recorded as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from structlog.typing import FilteringBoundLogger

from edge.config import AuditSettings
from edge.errors import UsageError
from edge.log import get_logger
from edge.redaction import REDACTOR

AUDIT_DIR_NAME: Final = "audit"
AUDIT_FILE_NAME: Final = "audit.jsonl"
#: What an entry's "outcome" says.
ALLOWED: Final = "allowed"
DENIED: Final = "denied"
NOT_FOUND: Final = "not_found"
INVALID: Final = "invalid"
#: Longest secret id an entry keeps of what a caller sent.
MAX_ID_LENGTH: Final = 256
_DIR_MODE = 0o700
_FILE_MODE = 0o600

# (function ARN, secret id, resource id, label, version id, outcome)
_Key = tuple[str, str, str, str, str, str]


def audit_path(state_dir: Path) -> Path:
    """Where a core with this state directory keeps its audit log."""
    return state_dir / AUDIT_DIR_NAME / AUDIT_FILE_NAME


class AuditLog:
    """Counts secret reads in memory and appends them to the audit file on every flush."""

    def __init__(
        self,
        path: Path,
        settings: AuditSettings | None = None,
        *,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._path = path
        self._settings = settings or AuditSettings()
        self._log = logger or get_logger("audit")
        self._enabled = self._settings.enabled
        # key -> [count, first seen, last seen] (wall-clock seconds)
        self._pending: dict[_Key, list[Any]] = {}
        # Allowed reads, keyed as `record_read` gets them; turned into entries at flush.
        self._reads: dict[tuple[str, tuple[str, str, str], str], list[Any]] = {}
        # Reads workers served from their caches and reported (`record_reported`).
        self._reported: dict[tuple[str, tuple[str, str, str], str], list[Any]] = {}

    @property
    def path(self) -> Path:
        """The current audit file."""
        return self._path

    def record_read(self, function_arn: str, ids: tuple[str, str, str], label: str) -> None:
        """Count one allowed read (the hot path: positional, one dict update, no I/O).

        Args:
            function_arn: The reader.
            ids: (secret name, resource id, version id) of what was read.
            label: The staging label asked for ("" when asked by version id).
        """
        now = time.time()
        key = (function_arn, ids, label)
        seen = self._reads.get(key)
        if seen is None:
            if self._enabled:
                self._reads[key] = [1, now, now]
        else:
            seen[0] += 1
            seen[2] = now

    def record_reported(
        self, function_arn: str, ids: tuple[str, str, str], label: str, count: int
    ) -> None:
        """Count `count` allowed reads a worker served from its own cache and reported.

        Args:
            function_arn: The reader.
            ids: (secret name, resource id, version id) of what was read.
            label: The staging label asked for ("" when asked by version id).
            count: How many reads the worker reported.
        """
        if not self._enabled:
            return
        now = time.time()
        key = (function_arn, ids, label)
        seen = self._reported.get(key)
        if seen is None:
            self._reported[key] = [count, now, now]
        else:
            seen[0] += count
            seen[2] = now

    def record(
        self,
        function_arn: str,
        outcome: str,
        *,
        secret_id: str,
        resource_id: str = "",
        label: str = "",
        version_id: str = "",
    ) -> None:
        """Count one read with any outcome (see `record_read` for the fast allowed case)."""
        if not self._enabled:
            return
        now = time.time()
        key = (function_arn, secret_id, resource_id, label, version_id, outcome)
        seen = self._pending.get(key)
        if seen is None:
            self._pending[key] = [1, now, now]
        else:
            seen[0] += 1
            seen[2] = now

    def record_unknown(
        self, function_arn: str, outcome: str, secret_id: object, *, label: str = ""
    ) -> None:
        """Count a refused read whose secret id and label came from the caller: anything."""
        shown = secret_id if isinstance(secret_id, str) else f"<{type(secret_id).__name__}>"
        self.record(
            function_arn,
            outcome,
            secret_id=REDACTOR.mask(shown[:MAX_ID_LENGTH]),
            label=REDACTOR.mask(label[:MAX_ID_LENGTH]),
        )

    async def run(self) -> None:
        """Flush every `flush_seconds` until cancelled, then flush what is left."""
        if not self._settings.enabled:
            return
        try:
            while True:
                await asyncio.sleep(self._settings.flush_seconds)
                await self.flush()
        finally:
            # Cancelled (the core is stopping): what was counted still goes to the file.
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        """Append what was counted since the last flush."""
        pending, self._pending = self._pending, {}
        reads, self._reads = self._reads, {}
        reported, self._reported = self._reported, {}
        for (function_arn, (name, resource_id, version_id), label), seen in reads.items():
            pending[function_arn, name, resource_id, label, version_id, ALLOWED] = seen
        if not pending and not reported:
            return
        lines = b"".join(_entry_line(key, seen) for key, seen in pending.items()) + b"".join(
            _entry_line((arn, name, rid, label, vid, ALLOWED), seen, self_reported=True)
            for (arn, (name, rid, vid), label), seen in reported.items()
        )
        try:
            await asyncio.to_thread(self._append, lines)
        except OSError as exc:
            # The audit trail must not take secret serving down with it (a full disk): say so.
            self._log.error("audit.write_failed", path=str(self._path), error=str(exc))

    def _append(self, data: bytes) -> None:
        directory = self._path.parent
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(directory, _DIR_MODE)
        self._rotate_if_full(len(data))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self._path, flags, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rotate_if_full(self, adding: int) -> None:
        try:
            size = self._path.stat().st_size
        except FileNotFoundError:
            return
        if size + adding <= self._settings.max_bytes:
            return
        backups = self._settings.backups
        if backups == 0:
            self._path.unlink()
            return
        for n in range(backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(_backup(self._path, n), _backup(self._path, n + 1))
        os.replace(self._path, _backup(self._path, 1))
        self._log.info("audit.rotated", path=str(self._path))


def _backup(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _entry_line(key: _Key, seen: list[Any], *, self_reported: bool = False) -> bytes:
    function_arn, secret_id, resource_id, label, version_id, outcome = key
    count, first, last = seen
    entry = {
        "time": _iso(first),
        "last": _iso(last),
        "function_arn": function_arn,
        "secret_id": secret_id,
        "resource_id": resource_id,
        "label": label,
        "version_id": version_id,
        "outcome": outcome,
        "count": count,
    }
    if self_reported:
        entry["self_reported"] = True
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


# --- reading ------------------------------------------------------------------------------------


def read_entries(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the audit log's entries, oldest file first; a torn last line is skipped."""
    files = sorted(
        path.parent.glob(f"{path.name}.*"),
        key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
        reverse=True,
    )
    for file in [*files, path]:
        try:
            info = file.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        with file.open("rb") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a write cut short by a crash
                if isinstance(entry, dict):
                    yield entry


def matches(entry: dict[str, Any], *, since: datetime | None, function: str | None) -> bool:
    """Whether an entry passes `edge secrets audit`'s filters.

    Args:
        entry: One audit entry.
        since: Keep entries whose last read is at or after this time.
        function: A function ARN (qualified or not) or a function name.
    """
    if since is not None:
        try:
            last = datetime.fromisoformat(str(entry.get("last", "")))
        except ValueError:
            return False
        if last < since:
            return False
    if function:
        arn = str(entry.get("function_arn", ""))
        parts = arn.split(":")
        name = parts[6] if len(parts) > 6 else arn  # noqa: PLR2004 - arn:aws:lambda:r:a:function:name
        if function not in (arn, name) and not arn.startswith(function + ":"):
            return False
    return True


#: The fields that make two entries the same read, told apart only by when and how often.
SUMMARY_KEY: Final = (
    "function_arn",
    "secret_id",
    "resource_id",
    "label",
    "version_id",
    "outcome",
    "self_reported",
)


def summarize(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per distinct read: the first `time`, the `last`, the summed `count`.

    The file holds one line per read per flush interval; a person asking "who read what"
    wants each read once, with when it started and when it last happened. Ordered by first
    read.
    """
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for entry in entries:
        key = tuple(str(entry.get(field, "")) for field in SUMMARY_KEY)
        seen = merged.get(key)
        if seen is None:
            merged[key] = dict(entry)
            continue
        # ISO 8601 UTC times of one format compare correctly as strings.
        seen["time"] = min(str(seen.get("time", "")), str(entry.get("time", "")))
        seen["last"] = max(str(seen.get("last", "")), str(entry.get("last", "")))
        seen["count"] = int(seen.get("count", 0)) + int(entry.get("count", 0))
    return sorted(merged.values(), key=lambda e: str(e.get("time", "")))


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """Parse `--since`: an ISO 8601 time (UTC if it has no offset) or an age like `15m`.

    Raises:
        UsageError: Neither form.
    """
    text = text.strip()
    unit = _UNITS.get(text[-1:])
    if unit is not None and text[:-1].isdigit():
        return (now or datetime.now(UTC)) - timedelta(seconds=int(text[:-1]) * unit)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: give an ISO 8601 time (2026-11-28T10:00:00Z) or an age such "
            "as 90s, 15m, 2h, 7d"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
