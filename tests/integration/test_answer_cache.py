"""Workers' caches of answers, with real workers and the unmodified greengrasssdk.

Repeated reads are answered inside the worker (the core's request counter doesn't move); every
commit reaches the caches before it is reported; a worker that doesn't acknowledge is killed
and restarted first; reads served from a cache reach the audit log marked self-reported.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from edge.audit import audit_path, read_entries
from edge.fixtures.core import edge_cli, secret_resource
from tests.support.env import Env
from tests.support.functions import code_of, function, invoke
from tests.support.leaks import LEAKS
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.network

V1_READS = r'edge_ipc_requests_total\{op="secretsmanager.get_secret_value_v1",result="ok"\}'


def _rotate(env: Env, arn: str) -> tuple[str, str]:
    """Put a new AWSCURRENT version; return (VersionId, value)."""
    value = f"rotated-{len(env.values)}-value"
    env.values.append(value)
    LEAKS.add_secret(value, arn)
    return env.sm.put_secret_value(SecretId=arn, SecretString=value)["VersionId"], value


def _refresh(env: Env, secret_id: str) -> str:
    """Have the `typed` function ask the core to refresh the secret; the value it then reads."""
    (result,) = invoke(env, "typed", {"calls": [{"SecretId": secret_id, "Refresh": True}]})
    assert result["ok"], result
    value: str = result["value"]["SecretString"]
    return value


def _last(events: list[dict[str, Any]], name: str) -> int:
    return max(i for i, e in enumerate(events) if e.get("event") == name)


def _functions(tmp_path: Path, *, pinned: bool, reads: bool = True) -> list[dict[str, Any]]:
    package = code_of(tmp_path / "cached.zip", ("cached.py", "typed.py"))
    return [
        function("reader", "cached.read", package, policies=["db"] if reads else [], pinned=pinned),
        function("typed", "typed.calls", package, policies=["db"]),
    ]


def test_repeated_reads_stay_in_the_worker_until_a_change_reaches_it(
    metered: Env, tmp_path: Path
) -> None:
    """A warm worker answers repeats itself; a refresh and a revocation reach it before Success."""
    env = metered
    arn, first_id, first = env.create_secret("cache/db")
    resources = [secret_resource("db", arn)]
    env.operator.wait_status(
        env.operator.deploy(resources, functions=_functions(tmp_path, pinned=False)), "Success"
    )
    read = {"SecretId": "cache/db"}
    assert invoke(env, "reader", read)["values"] == [first]
    assert invoke(env, "reader", {**read, "times": 0, "wait_cached": True})["cached"] is True

    before = scrape(env)
    assert value(before, "edge_ipc_cache_watches") == 1
    before = value(before, V1_READS)
    answer = invoke(env, "reader", {**read, "times": 200})
    assert answer["values"] == [first]
    # One read reached the core (the first since the cache was on); 199 never left the worker.
    assert value(scrape(env), V1_READS) - before == 1

    _, second = _rotate(env, arn)
    assert _refresh(env, "cache/db") == second
    # The refresh was reported only once the reader's cache had acknowledged it.
    events = env.core.events()
    invalidated = _last(events, "caches.invalidated")
    assert invalidated < _last(events, "refresh.rotated")
    assert (events[invalidated]["watches"], events[invalidated]["late"]) == (1, 0)
    assert invoke(env, "reader", {**read, "times": 5})["values"] == [second]
    samples = scrape(env)
    assert value(samples, "edge_ipc_cache_invalidations_total") >= 1
    assert value(samples, "edge_ipc_cache_unacknowledged_total") == 0

    # The 199 reads the cache served were reported with the acknowledgement, and audited.
    deadline = time.monotonic() + 10
    reported: list[dict[str, Any]] = []
    while not reported and time.monotonic() < deadline:
        reported = [e for e in read_entries(audit_path(env.state_dir)) if e.get("self_reported")]
        time.sleep(0.1)
    assert [(e["version_id"], e["count"], e["outcome"]) for e in reported] == [
        (first_id, 199, "allowed")
    ]
    assert all(e["function_arn"].endswith(":reader:1") for e in reported)
    table = edge_cli("secrets", "audit", "--config", str(env.config), "--function", "reader")
    assert table.returncode == 0, table.stderr
    assert [row.split()[-2:] for row in table.stdout.splitlines() if first_id in row] == [
        ["allowed", "2"],  # the core's: the read before the watch, and the first after
        ["allowed*", "199"],
    ]
    assert "cache of answers" in table.stdout

    # A deployment that revokes the grant: the next read fails.
    dep = env.operator.deploy(resources, functions=_functions(tmp_path, pinned=False, reads=False))
    env.operator.wait_status(dep, "Success")
    denied = invoke(env, "reader", read)
    assert denied["error"] == "SecretsManagerError"
    assert "may not read" in denied["message"]


def test_a_worker_that_does_not_acknowledge_is_restarted_before_the_change_is_reported(
    env: Env, tmp_path: Path
) -> None:
    """A frozen worker's cache can't serve a stale read: it is killed before Success."""
    arn, _, first = env.create_secret("cache/db")
    resources = [secret_resource("db", arn)]
    functions = _functions(tmp_path, pinned=True)
    env.operator.wait_status(env.operator.deploy(resources, functions=functions), "Success")
    read = {"SecretId": "cache/db"}
    assert invoke(env, "reader", read)["values"] == [first]  # the first read starts the watch
    warm = invoke(env, "reader", {**read, "wait_cached": True, "times": 2})
    assert (warm["values"], warm["cached"]) == ([first], True)
    frozen = warm["pid"]

    os.kill(frozen, signal.SIGSTOP)
    _, second = _rotate(env, arn)
    assert _refresh(env, "cache/db") == second
    events = env.core.events()
    assert events[_last(events, "caches.invalidated")]["late"] == 1
    assert _last(events, "worker.killed") < _last(events, "refresh.rotated")
    with pytest.raises(ProcessLookupError):  # dead and reaped before the refresh was reported
        os.kill(frozen, 0)
    after = invoke(env, "reader", read)
    assert after["values"] == [second]
    assert after["pid"] != frozen

    # A deployment waits for the same acknowledgement, and still succeeds past a frozen worker.
    assert invoke(env, "reader", {**read, "wait_cached": True, "times": 2})["cached"] is True
    os.kill(after["pid"], signal.SIGSTOP)
    killed = env.core.count("worker.killed")
    env.operator.wait_status(env.operator.deploy(resources, functions=functions), "Success")
    assert env.core.count("worker.killed") == killed + 1
    events = env.core.events()
    assert _last(events, "worker.killed") < _last(events, "deploy.complete")
    with pytest.raises(ProcessLookupError):
        os.kill(after["pid"], 0)
    assert invoke(env, "reader", read)["values"] == [second]
