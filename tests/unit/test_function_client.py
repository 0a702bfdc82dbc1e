"""`edge.child.function` outside a core: a clear error, before any connection is tried."""

from __future__ import annotations

import pytest

from edge.child import function


def test_outside_a_core_the_client_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_IPC_SOCKET", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", raising=False)
    monkeypatch.setattr(function, "_shared", None)
    with pytest.raises(function.IpcConnectionError, match="not running under an edge core"):
        function.get_secret_value("app/db")
