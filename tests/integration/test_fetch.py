# SPDX-License-Identifier: Apache-2.0
"""AwsSecretSource against moto's Secrets Manager over real HTTP, with a fault-injecting proxy."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import structlog.testing

from bench.latency_proxy import LatencyProxy
from edge.config import FetchSettings
from edge.errors import (
    FetchDeadlineError,
    SecretNotFoundError,
    SecretServiceError,
    StagingLabelNotFoundError,
)
from edge.fixtures.services import TEST_REGION, free_port
from edge.model import SecretResource
from edge.secrets.fetch import AwsSecretSource
from edge.secrets.source import StaticSecretSource

pytestmark = pytest.mark.network

MISSING_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:nowhere-AbCdEf"


def resource(arn: str, *labels: str, rid: str | None = None) -> SecretResource:
    """A secret resource as a group would declare it."""
    name = arn.rsplit(":", 1)[-1]
    return SecretResource(
        resource_id=rid or f"res-{name}", name=name, arn=arn, additional_labels=labels
    )


@contextlib.asynccontextmanager
async def aws(url: str, **settings: object) -> AsyncIterator[AwsSecretSource]:
    """An open AwsSecretSource on the endpoint with the given settings."""
    async with AwsSecretSource(
        region=TEST_REGION, endpoint_url=url, settings=FetchSettings(**settings)
    ) as source:
        yield source


def make_secrets(sm, count: int, *, labels: int = 0, prefix: str = "s") -> list[SecretResource]:
    """Create `count` string secrets, each with `labels` extra labels on versions of their own."""
    out = []
    for i in range(count):
        arn = sm.create_secret(Name=f"{prefix}{i}", SecretString=f"{prefix}{i}-current")["ARN"]
        extra = [f"L{j}" for j in range(labels)]
        for label in extra:
            sm.put_secret_value(
                SecretId=arn, SecretString=f"{prefix}{i}-{label}", VersionStages=[label]
            )
        out.append(resource(arn, *extra))
    return out


@pytest.fixture
async def proxy(moto) -> AsyncIterator[LatencyProxy]:
    """A loopback proxy in front of the test's moto, with no delay until a test sets one."""
    async with LatencyProxy(upstream=moto.url, delay=0.0) as p:
        yield p


async def test_string_and_binary_secrets_with_extra_labels(moto, sm):
    """String and binary secrets arrive with every requested label, exactly as stored."""
    db = sm.create_secret(Name="db", SecretString="pw-current")
    sm.put_secret_value(SecretId=db["ARN"], SecretString="pw-next", VersionStages=["Label1"])
    cert = sm.create_secret(Name="cert", SecretBinary=b"\x00\x01current")
    old = sm.put_secret_value(
        SecretId=cert["ARN"], SecretBinary=b"\xffold", VersionStages=["Label2"]
    )

    async with aws(moto.url) as source:
        got = await source.fetch(
            [resource(db["ARN"], "Label1", rid="r-db"), resource(cert["ARN"], "Label2", rid="r-c")]
        )

    assert set(got) == {"r-db", "r-c"}
    s = got["r-db"]
    assert (s.resource_id, s.arn, s.name) == ("r-db", db["ARN"], "db")
    assert s.labels["AWSCURRENT"] == db["VersionId"]
    assert s.version_for("AWSCURRENT").secret_string == "pw-current"
    assert s.version_for("Label1").secret_string == "pw-next"
    assert s.version_for("Label1").version_stages == ("Label1",)
    assert s.version_for("AWSCURRENT").created_date > 0
    assert len(s.versions) == 2
    c = got["r-c"]
    assert c.name == "cert"
    assert c.version_for("AWSCURRENT").secret_binary == b"\x00\x01current"
    assert c.version_for("AWSCURRENT").secret_string is None
    assert c.version_for("Label2").secret_binary == b"\xffold"
    assert c.labels["Label2"] == old["VersionId"]


async def test_labels_sharing_a_version_are_stored_once(moto, sm):
    """Two labels on one version map to one stored version with both stages."""
    created = sm.create_secret(Name="shared", SecretString="v1")
    sm.update_secret_version_stage(
        SecretId=created["ARN"], VersionStage="prod", MoveToVersionId=created["VersionId"]
    )

    async with aws(moto.url) as source:
        got = await source.fetch([resource(created["ARN"], "prod", rid="r")])

    secret = got["r"]
    assert secret.labels == {"AWSCURRENT": created["VersionId"], "prod": created["VersionId"]}
    assert list(secret.versions) == [created["VersionId"]]
    assert set(secret.versions[created["VersionId"]].version_stages) == {"AWSCURRENT", "prod"}


async def test_batch_and_single_paths_give_the_same_result(moto, sm):
    """BatchGetSecretValue and per-secret GetSecretValue produce identical secrets."""
    resources = make_secrets(sm, 5, labels=2)

    async with aws(moto.url, use_batch=True) as batched:
        with_batch = await batched.fetch(resources)
    async with aws(moto.url, use_batch=False) as single:
        without = await single.fetch(resources)

    assert with_batch == without
    assert batched.calls == {"BatchGetSecretValue": 1, "GetSecretValue": 10}
    assert single.calls == {"GetSecretValue": 15}


async def test_more_than_20_secrets_are_fetched_in_chunks_of_20(moto, sm):
    """45 secrets take three BatchGetSecretValue calls and no GetSecretValue."""
    resources = make_secrets(sm, 45)

    async with aws(moto.url) as source:
        got = await source.fetch(resources)

    assert source.calls == {"BatchGetSecretValue": 3}
    assert len(got) == 45
    for r in resources:
        current = got[r.resource_id].version_for("AWSCURRENT")
        assert current.secret_string == f"{r.secret_name}-current"


@pytest.mark.parametrize("use_batch", [True, False])
async def test_missing_secret_raises_secret_not_found(moto, sm, use_batch):
    """A secret that doesn't exist fails the whole fetch with SecretNotFoundError naming it."""
    resources = [*make_secrets(sm, 3), resource(MISSING_ARN)]

    async with aws(moto.url, use_batch=use_batch) as source:
        with pytest.raises(SecretNotFoundError) as caught:
            await source.fetch(resources)

    assert caught.value.arn == MISSING_ARN
    assert MISSING_ARN in str(caught.value)


@pytest.mark.parametrize("use_batch", [True, False])
async def test_secret_marked_for_deletion_is_not_found(moto, sm, use_batch):
    """A secret deleted without force (in its recovery window) counts as not found."""
    arn = sm.create_secret(Name="doomed", SecretString="x")["ARN"]
    sm.delete_secret(SecretId=arn)

    async with aws(moto.url, use_batch=use_batch) as source:
        with pytest.raises(SecretNotFoundError) as caught:
            await source.fetch([resource(arn, "Label1")])

    assert caught.value.arn == arn


@pytest.mark.parametrize("use_batch", [True, False])
async def test_stale_arn_of_a_recreated_secret_is_not_found(moto, sm, use_batch):
    """An old ARN never takes the value of a secret re-created under its name, even in a batch."""
    old = sm.create_secret(Name="reborn", SecretString="old")["ARN"]
    sm.delete_secret(SecretId=old, ForceDeleteWithoutRecovery=True)
    new = sm.create_secret(Name="reborn", SecretString="new")["ARN"]

    async with aws(moto.url, use_batch=use_batch) as source:
        assert (await source.fetch([resource(new, rid="n")]))["n"].name == "reborn"
        with pytest.raises(SecretNotFoundError) as caught:
            await source.fetch([resource(old, rid="o"), resource(new, rid="n")])

    assert caught.value.arn == old


async def test_missing_label_raises_staging_label_not_found(moto, sm):
    """A label no version carries fails with StagingLabelNotFoundError naming label and ARN."""
    arn = sm.create_secret(Name="nolabel", SecretString="x")["ARN"]

    async with aws(moto.url) as source:
        with pytest.raises(StagingLabelNotFoundError) as caught:
            await source.fetch([resource(arn, "Ghost")])

    assert (caught.value.arn, caught.value.label) == (arn, "Ghost")
    assert arn in str(caught.value)
    assert "'Ghost'" in str(caught.value)


async def test_concurrency_bound_is_honoured(sm, proxy):
    """No more than `concurrency` requests are ever in flight, and that many are used."""
    resources = make_secrets(sm, 10, labels=2)
    proxy.delay = 0.05

    async with aws(proxy.url, concurrency=4) as source:
        await source.fetch(resources)

    assert proxy.max_in_flight == 4
    assert proxy.requests.total() == source.calls.total() == 1 + 20


async def test_deadline_expiry_raises_fetch_deadline_error(sm, proxy):
    """A fetch that outlives its deadline stops there with FetchDeadlineError and a count."""
    resources = make_secrets(sm, 3, labels=1)
    proxy.delay = 5.0

    started = time.perf_counter()
    async with aws(proxy.url, deadline_seconds=0.3) as source:
        with pytest.raises(FetchDeadlineError) as caught:
            await source.fetch(resources)

    assert time.perf_counter() - started < 2.0
    assert (caught.value.done, caught.value.total) == (0, 6)


async def test_throttling_and_5xx_are_retried_until_success(sm, proxy):
    """Injected 429 ThrottlingException and 503 answers are retried by botocore; fetch works."""
    resources = make_secrets(sm, 4, labels=1)
    proxy.inject(status=429, code="ThrottlingException", count=3)
    proxy.inject(status=503, code="ServiceUnavailable", count=2)

    async with aws(proxy.url) as source:
        got = await source.fetch(resources)

    assert len(got) == 4
    assert proxy.injected.total() == 5
    # One batch call and four GetSecretValue calls, plus one resend per injected fault.
    assert source.calls.total() == proxy.requests.total() == 1 + 4 + 5


async def test_batch_refused_falls_back_to_get_secret_value_for_good(sm, proxy):
    """An AccessDenied BatchGetSecretValue switches the source to GetSecretValue, logged once."""
    resources = make_secrets(sm, 45)
    proxy.refuse("BatchGetSecretValue")

    async with aws(proxy.url) as source:
        with structlog.testing.capture_logs() as logs:
            first = await source.fetch(resources)
        refused = source.calls["BatchGetSecretValue"]
        second = await source.fetch(resources)

    assert first == second
    assert len(first) == 45
    assert [e for e in logs if e["event"] == "fetch.batch.unavailable"] == [
        {
            "event": "fetch.batch.unavailable",
            "log_level": "warning",
            "code": "AccessDeniedException",
            "fallback": "GetSecretValue",
        }
    ]
    assert 1 <= refused <= 3  # chunks already in flight when the first refusal came back
    assert source.calls["BatchGetSecretValue"] == refused
    assert source.calls["GetSecretValue"] == 90


async def test_unreachable_endpoint_raises_service_error_in_bounded_time():
    """Nothing listening on the endpoint ends in SecretServiceError after a few quick retries."""
    url = f"http://127.0.0.1:{free_port()}"
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:any-AbCdEf"

    started = time.perf_counter()
    async with aws(url, max_attempts=3) as source:
        with pytest.raises(SecretServiceError) as caught:
            await source.fetch([resource(arn, "Label1")])

    assert time.perf_counter() - started < 10.0
    assert caught.value.arn == arn
    assert "EndpointConnectionError" in str(caught.value)


async def test_no_secret_value_reaches_logs_or_error_messages(moto, sm):
    """Captured log events and exception messages never contain a secret value."""
    values = ["hunter2-current-value", "hunter2-label-value"]
    arn = sm.create_secret(Name="quiet", SecretString=values[0])["ARN"]
    sm.put_secret_value(SecretId=arn, SecretString=values[1], VersionStages=["Label1"])

    async with aws(moto.url) as source:
        with structlog.testing.capture_logs() as logs:
            got = await source.fetch([resource(arn, "Label1")])
            with pytest.raises(StagingLabelNotFoundError) as caught:
                await source.fetch([resource(arn, "Label1", "Ghost")])

    assert got[f"res-{arn.rsplit(':', 1)[-1]}"].version_for("Label1").secret_string == values[1]
    assert {e["event"] for e in logs} >= {"fetch.started", "fetch.complete", "fetch.failed"}
    seen = repr(logs) + str(caught.value) + repr(caught.value.__cause__) + repr(got)
    for value in values:
        assert value not in seen


async def test_static_source_agrees_with_aws(moto, sm):
    """StaticSecretSource returns what AwsSecretSource returns, and fails the same way."""
    resources = make_secrets(sm, 3, labels=2)
    async with aws(moto.url) as source:
        fetched = await source.fetch(resources)
    static = StaticSecretSource({s.arn: list(s.versions.values()) for s in fetched.values()})

    assert await static.fetch(resources) == fetched
    with pytest.raises(StagingLabelNotFoundError):
        await static.fetch([resource(resources[0].arn, "Ghost")])
    with pytest.raises(SecretNotFoundError):
        await static.fetch([resource(MISSING_ARN)])
