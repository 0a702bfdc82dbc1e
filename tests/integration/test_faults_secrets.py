# SPDX-License-Identifier: Apache-2.0
"""Secrets Manager faults under a running core.

A real `edge run` process takes deployments from a real Mosquitto and fetches through
bench/latency_proxy.py, a loopback proxy in front of moto that throttles, fails, resets, delays
and goes away on demand, and counts every request it sees. Each test proves what an operator
notices: the deployment's final status and its message, how many requests the core sent, and
that a failed deployment leaves the store file and what the core serves exactly as they were.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.proxy_thread import ProxyThread, proxy_thread
from edge.fixtures.core import secret_resource
from edge.fixtures.services import Mosquitto, MotoServer
from tests.support.env import Env
from tests.support.faults import (
    deploy_and_wait,
    fetch_table,
    read_through_ipc,
    reader_function,
    rotate,
    running_core,
    served,
)

pytestmark = pytest.mark.network

#: Attempts per API call in these tests' [fetch] table (the first included).
MAX_ATTEMPTS = 3

StartCore = Callable[..., Env]


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[ProxyThread]:
    """The fault-injecting proxy in front of this test's moto, healthy until a test says not."""
    with proxy_thread(moto.url) as p:
        yield p


@pytest.fixture
def start_core(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any, proxy: ProxyThread
) -> Iterator[StartCore]:
    """Start a core whose Secrets Manager endpoint is the proxy, with the given [fetch] keys."""
    with contextlib.ExitStack() as stack:

        def start(**fetch: Any) -> Env:
            return stack.enter_context(
                running_core(
                    tmp_path,
                    broker=broker,
                    moto=moto,
                    sm=sm,
                    endpoint_url=proxy.url,
                    fetch=fetch_table(**fetch),
                )
            )

        yield start


def requests_during(proxy: ProxyThread, action: Callable[[], Any]) -> tuple[Any, int]:
    """Run `action`; return its result and how many requests the proxy saw meanwhile."""
    before = sum(proxy.requests().values())
    result = action()
    return result, sum(proxy.requests().values()) - before


def test_transient_throttling_5xx_and_resets_are_retried_once_each(
    start_core: StartCore, proxy: ProxyThread
) -> None:
    """A few 429/500/503 answers and a dropped connection cost one resend each; then Success."""
    env = start_core(max_attempts=4)
    arn_a, _, _ = env.create_secret("faults/a")
    env.add_labelled_version(arn_a, "Label1")
    arn_b, _, _ = env.create_secret("faults/b")
    resources = [secret_resource("a", arn_a, ["Label1"]), secret_resource("b", arn_b)]
    healthy, calls = requests_during(proxy, lambda: deploy_and_wait(env, resources))
    assert healthy["DeploymentStatus"] == "Success", healthy
    assert calls >= 2  # AWSCURRENT of both, and Label1 of its own version

    new_a, _ = rotate(env, arn_a)
    new_b, _ = rotate(env, arn_b)

    # The redeploy is incremental: DescribeSecret for both secrets, then GetSecretValue for the
    # two new AWSCURRENT versions only (Label1 still names a version the core holds).
    def faults(p: Any) -> None:
        p.inject(status=429, code="ThrottlingException", count=2, operation="DescribeSecret")
        p.reset(count=1, operation="DescribeSecret")
        p.inject(status=500, code="InternalFailure", count=1, operation="GetSecretValue")
        p.inject(status=503, code="ServiceUnavailable", count=1, operation="GetSecretValue")

    proxy.do(faults)
    before = proxy.requests()
    started = time.monotonic()
    status = deploy_and_wait(env, resources, deployment_type="Redeployment")
    assert status["DeploymentStatus"] == "Success", status
    assert time.monotonic() - started < 15
    injected = proxy.do(lambda p: dict(p.injected))
    assert injected == {"DescribeSecret": 3, "GetSecretValue": 2}
    # Exactly one resend per fault: no retry loop of our own on top of botocore's.
    after = proxy.requests()
    sent = {op: after.get(op, 0) - before.get(op, 0) for op in after}
    assert {op: n for op, n in sent.items() if n} == {
        "DescribeSecret": 2 + 3,
        "GetSecretValue": 2 + 2,
    }
    complete = [e for e in env.core.events() if e.get("event") == "fetch.complete"]
    assert [e["calls"] for e in complete] == [calls, 4 + 5]
    deployment_id, labels = served(env)
    assert deployment_id == status["DeploymentId"]
    assert labels["a"]["AWSCURRENT"] == new_a
    assert labels["b"]["AWSCURRENT"] == new_b


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, "ThrottlingException"), (503, "ServiceUnavailable")],
    ids=["throttled", "unavailable"],
)
def test_persistent_faults_fail_after_bounded_retries_and_keep_serving_the_old_store(
    start_core: StartCore, proxy: ProxyThread, tmp_path: Path, status: int, code: str
) -> None:
    """Throttling or 5xx that never ends: Failure naming secret and cause, old store served."""
    env = start_core(max_attempts=MAX_ATTEMPTS)
    arn, old_version, old_value = env.create_secret("faults/persistent")
    resources = [secret_resource("db", arn)]
    functions = [reader_function(tmp_path / "app.zip", ["db"])]
    healthy, calls = requests_during(
        proxy, lambda: deploy_and_wait(env, resources, functions=functions)
    )
    assert healthy["DeploymentStatus"] == "Success", healthy
    before = env.store_path.read_bytes()
    rotate(env, arn)

    proxy.do(lambda p: p.inject(status=status, code=code, count=None))
    started = time.monotonic()
    failed, attempts = requests_during(
        proxy,
        lambda: deploy_and_wait(
            env, resources, functions=functions, deployment_type="Redeployment"
        ),
    )
    elapsed = time.monotonic() - started

    assert failed["DeploymentStatus"] == "Failure", failed
    message = failed["ErrorMessage"]
    assert arn in message
    assert f"{code} (HTTP {status})" in message
    assert f"after {MAX_ATTEMPTS} attempts" in message
    # Every call the healthy deployment made was tried exactly MAX_ATTEMPTS times, no more.
    assert attempts == calls * MAX_ATTEMPTS
    assert elapsed < 15
    assert env.store_path.read_bytes() == before
    assert served(env) == (healthy["DeploymentId"], {"db": {"AWSCURRENT": old_version}})
    assert read_through_ipc(env, arn)["SecretString"] == old_value


def test_endpoint_down_fails_quickly_and_a_later_deployment_succeeds(
    start_core: StartCore, proxy: ProxyThread
) -> None:
    """Nothing listening at the endpoint: Failure naming it within seconds; nothing applied."""
    env = start_core(max_attempts=MAX_ATTEMPTS)
    arn, old_version, _ = env.create_secret("faults/down")
    resources = [secret_resource("db", arn)]
    first = env.operator.deploy(resources)
    assert env.operator.final_status(first)["DeploymentStatus"] == "Success"
    before = env.store_path.read_bytes()
    new_version, _ = rotate(env, arn)

    proxy.stop()
    started = time.monotonic()
    failed = deploy_and_wait(env, resources, deployment_type="Redeployment")
    elapsed = time.monotonic() - started

    assert failed["DeploymentStatus"] == "Failure", failed
    message = failed["ErrorMessage"]
    assert arn in message
    assert f"can't connect to {proxy.url}" in message
    assert "[aws] endpoint_url" in message
    assert elapsed < 10
    assert env.store_path.read_bytes() == before
    assert served(env) == (first, {"db": {"AWSCURRENT": old_version}})

    proxy.start()
    again = deploy_and_wait(env, resources, deployment_type="Redeployment")
    assert again["DeploymentStatus"] == "Success", again
    assert served(env) == (again["DeploymentId"], {"db": {"AWSCURRENT": new_version}})


def test_deadline_expiry_fails_with_nothing_half_applied_then_recovers(
    start_core: StartCore, proxy: ProxyThread, tmp_path: Path
) -> None:
    """One slow call past [fetch] deadline_seconds fails the whole deployment; the old is kept."""
    deadline = 2
    env = start_core(deadline_seconds=deadline, max_attempts=MAX_ATTEMPTS)
    arn, old_version, old_value = env.create_secret("faults/slow")
    old_label, _ = env.add_labelled_version(arn, "Label1")
    resources = [secret_resource("db", arn, ["Label1"])]
    functions = [reader_function(tmp_path / "app.zip", ["db"])]
    first = env.operator.deploy(resources, functions=functions)
    assert env.operator.final_status(first)["DeploymentStatus"] == "Success"
    before = env.store_path.read_bytes()
    new_version, _ = rotate(env, arn)
    new_label, _ = env.add_labelled_version(arn, "Label1")

    # Both versions are new: one of their calls comes back at once, the other stalls far beyond
    # the deadline.
    proxy.do(lambda p: p.inject(status=None, operation="GetSecretValue", delay=60, count=1))
    started = time.monotonic()
    failed = deploy_and_wait(env, resources, functions=functions, deployment_type="Redeployment")
    elapsed = time.monotonic() - started

    assert failed["DeploymentStatus"] == "Failure", failed
    message = failed["ErrorMessage"]
    assert f"within {deadline} s" in message
    assert "1 of 2 versions fetched" in message
    assert "deadline_seconds" in message
    assert deadline <= elapsed < deadline + 5
    assert env.store_path.read_bytes() == before
    assert served(env) == (first, {"db": {"AWSCURRENT": old_version, "Label1": old_label}})
    assert read_through_ipc(env, "faults/slow")["SecretString"] == old_value

    proxy.do(lambda p: p.clear_faults())
    again = deploy_and_wait(env, resources, functions=functions, deployment_type="Redeployment")
    assert again["DeploymentStatus"] == "Success", again
    assert served(env) == (
        again["DeploymentId"],
        {"db": {"AWSCURRENT": new_version, "Label1": new_label}},
    )


def test_error_text_echoing_a_secret_value_reaches_no_status_or_log(
    start_core: StartCore, proxy: ProxyThread
) -> None:
    """An endpoint that quotes a value the core never fetched in its errors leaks nothing."""
    env = start_core(max_attempts=2)
    arn, _, _ = env.create_secret("faults/echo")
    resources = [secret_resource("db", arn)]
    assert deploy_and_wait(env, resources)["DeploymentStatus"] == "Success"
    _, new_value = rotate(env, arn)

    echo = f"the value is {new_value}"
    proxy.do(lambda p: p.inject(status=500, code="InternalFailure", count=None, message=echo))
    failed = deploy_and_wait(env, resources, deployment_type="Redeployment")

    assert failed["DeploymentStatus"] == "Failure", failed
    assert arn in failed["ErrorMessage"]
    assert "InternalFailure (HTTP 500)" in failed["ErrorMessage"]
    assert proxy.do(lambda p: p.injected.total()) >= 2
    # The fixture checks every log line, CLI output and status for every value on the way out;
    # this is the one an echoing server would have put there.
    assert new_value not in env.core.log_text()
    assert new_value not in str(env.operator.seen)
