"""The deployment inbox and history survive restarts and damage."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from edge.deploy.journal import HISTORY_LIMIT, History, Inbox


def test_inbox_keeps_documents_in_arrival_order_until_done(tmp_path: Path) -> None:
    """Documents put in the inbox come back oldest first after a restart, until marked done."""
    inbox = Inbox(tmp_path / "inbox")
    first = inbox.put(b"one")
    inbox.put(b"two")
    reopened = Inbox(tmp_path / "inbox")
    paths = reopened.pending_paths()
    assert [reopened.load(p, max_size=10).payload for p in paths] == [b"one", b"two"]
    reopened.done(first)
    again = Inbox(tmp_path / "inbox")
    assert [again.load(p, max_size=10).payload for p in again.pending_paths()] == [b"two"]
    assert stat.S_IMODE((tmp_path / "inbox").stat().st_mode) == 0o700


def test_inbox_load_refuses_oversized_links_and_special_files(tmp_path: Path) -> None:
    """A left-over document over the size limit, a link or a FIFO is an OSError, not a read."""
    inbox = Inbox(tmp_path / "inbox")
    big = inbox.put(b"x" * 11)
    assert big.path is not None
    with pytest.raises(OSError, match="more than the 10 bytes"):
        inbox.load(big.path, max_size=10)
    (tmp_path / "target").write_bytes(b"{}")
    (inbox.directory / "1.msg").symlink_to(tmp_path / "target")
    with pytest.raises(OSError, match="symbolic links") as info:
        inbox.load(inbox.directory / "1.msg", max_size=10)
    assert info.value.errno == errno.ELOOP
    os.mkfifo(inbox.directory / "2.msg")
    with pytest.raises(OSError, match="not a regular file"):
        inbox.load(inbox.directory / "2.msg", max_size=10)


def test_history_answers_redeliveries_after_a_restart(tmp_path: Path) -> None:
    """A recorded final status is found again by DeploymentId from a new History object."""
    history = History(tmp_path / "deployments.json")
    status = {"DeploymentId": "d1", "DeploymentStatus": "Success"}
    history.record(status)
    again = History(tmp_path / "deployments.json")
    assert again.get("d1") == status
    assert again.latest() == status
    assert again.get("d2") is None
    assert stat.S_IMODE((tmp_path / "deployments.json").stat().st_mode) == 0o600


def test_history_is_bounded(tmp_path: Path) -> None:
    """Only the most recent HISTORY_LIMIT outcomes are kept."""
    history = History(tmp_path / "h.json")
    for i in range(HISTORY_LIMIT + 5):
        history.record({"DeploymentId": f"d{i}", "DeploymentStatus": "Success"})
    kept = json.loads((tmp_path / "h.json").read_text())
    assert len(kept) == HISTORY_LIMIT
    assert History(tmp_path / "h.json").get("d0") is None
    assert History(tmp_path / "h.json").get(f"d{HISTORY_LIMIT + 4}") is not None


def test_damaged_history_is_ignored_not_fatal(tmp_path: Path) -> None:
    """A history file that isn't JSON starts an empty history instead of stopping the core."""
    (tmp_path / "h.json").write_text("{not json")
    history = History(tmp_path / "h.json")
    assert history.latest() is None
    history.record({"DeploymentId": "d", "DeploymentStatus": "Failure"})
    assert History(tmp_path / "h.json").get("d") is not None
