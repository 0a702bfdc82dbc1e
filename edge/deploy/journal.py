# SPDX-License-Identifier: Apache-2.0
"""Durable bookkeeping for deployments: an inbox of received documents and a history of outcomes.

The MQTT client acknowledges a QoS 1 message as soon as it is handed to us, so a crash after
that would lose the deployment. The inbox closes that gap: each document is written to disk
(atomically) before anything else happens, and deleted only once its outcome is recorded in the
history. On start, whatever is left in the inbox is applied again, in arrival order, read one
document at a time. Only documents that passed the size check reach the inbox.

The history lets a redelivered deployment (same DeploymentId) be answered with its final status
instead of being fetched again. Neither file holds a secret value: deployment documents carry
ARNs and ids only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.fsutil import atomic_replace, fsync_dir

#: How many outcomes to remember. Redeliveries come within minutes; 256 covers months of
#: deployments to one core at any sane rate while keeping the file tiny.
HISTORY_LIMIT = 256


def write_atomically(path: Path, data: bytes) -> None:
    """Write a small private file so that a crash leaves either the old or the new content."""
    atomic_replace(path, data)
    fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A received deployment document waiting to be applied.

    `path` is None for a document that could not be written to the inbox (a full or read-only
    disk): it is applied from memory, and a crash before its outcome is recorded loses it.
    """

    path: Path | None
    payload: bytes


class Inbox:
    """Received deployment documents, on disk until their outcome is recorded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, exist_ok=True)

    def put(self, payload: bytes) -> InboxEntry:
        """Persist a document; names sort in arrival order."""
        path = self.directory / f"{time.time_ns():020d}.msg"
        write_atomically(path, payload)
        return InboxEntry(path, payload)

    def pending_paths(self) -> deque[Path]:
        """Documents left over from before a restart, oldest first: names only, none read."""
        return deque(sorted(self.directory.glob("*.msg")))

    def load(self, path: Path, *, max_size: int) -> InboxEntry:
        """Read one left-over document.

        Raises:
            OSError: It can't be read, is not a regular file (a link is not followed), or is
                larger than `max_size` (EFBIG): what an older core accepted unchecked.
        """
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            data = file.read(max_size + 1)
        if len(data) > max_size:
            raise OSError(errno.EFBIG, f"more than the {max_size} bytes a document may have")
        return InboxEntry(path, data)

    def done(self, entry: InboxEntry) -> None:
        """Forget a document whose outcome is recorded.

        Raises:
            OSError: The file can't be removed (a read-only disk); after the next start it
                is answered from the history, or applied again if that has no outcome for it.
        """
        if entry.path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()


class History:
    """Final statuses of recent deployments, by DeploymentId, persisted as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            for doc in raw if isinstance(raw, list) else []:
                if isinstance(doc, dict) and isinstance(doc.get("DeploymentId"), str):
                    self._entries[doc["DeploymentId"]] = doc
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            # A damaged history only costs us duplicate detection; never block the core on it.
            self._entries.clear()

    def get(self, deployment_id: str) -> dict[str, Any] | None:
        """The final status document of a deployment, if it was seen."""
        return self._entries.get(deployment_id)

    def record(self, status: dict[str, Any]) -> None:
        """Remember a final status document and persist the history."""
        self._entries[status["DeploymentId"]] = status
        self._entries.move_to_end(status["DeploymentId"])
        while len(self._entries) > HISTORY_LIMIT:
            self._entries.popitem(last=False)
        write_atomically(self.path, json.dumps(list(self._entries.values()), indent=1).encode())

    def latest(self) -> dict[str, Any] | None:
        """The most recently recorded status document."""
        return next(reversed(self._entries.values()), None)
