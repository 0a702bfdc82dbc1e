# SPDX-License-Identifier: Apache-2.0
"""The core fetches in a short-lived child process and never imports botocore (or its crypto).

The import check reads CPython's own record: with PYTHONPROFILEIMPORTTIME set, a process
writes one `import time:` line to its stderr for every module it imports, whenever it does.
The core's stderr is its log file, so a line there that *starts* with `import time:` is an
import by the core itself; the fetch child's lines reach the same log only inside the core's
JSON events (its stderr is a pipe the core relays), which is how the test also sees that the
child did import botocore.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from edge.config import FetchSettings
from edge.errors import (
    FetchDeadlineError,
    SecretNotFoundError,
    SecretServiceError,
    StagingLabelNotFoundError,
)
from edge.fixtures.core import secret_resource
from edge.fixtures.services import TEST_REGION, Mosquitto, MotoServer
from edge.model import SecretResource
from edge.secrets import fetch_process
from edge.secrets.fetch_process import AwsTarget, ProcessSecretSource
from tests.support.env import running_env
from tests.support.functions import build_package, function, invoke
from tests.support.imports import imported_by, top_level
from tests.support.leaks import LEAKS
from tests.support.recording import RecordingLogger

pytestmark = pytest.mark.network

SDK_PACKAGES = ("botocore", "aiobotocore", "boto3")
#: What `structlog` loads of its optional extras whenever they are installed, which the core
#: hides (edge.log). Submodules: the import record lists the hidden top-level names too, as
#: attempts that found nothing.
STRUCTLOG_EXTRAS = {"rich.console", "rich.traceback", "rich.pretty", "colorama.ansitowin32"}


def test_the_core_never_imports_an_sdk_cryptography_or_rich_through_its_whole_life(
    tmp_path: Path,
    broker: Mosquitto,
    moto: MotoServer,
    sm: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Start, deployments with file:// and s3:// functions, a refresh, a restart: no SDK loaded.

    Nor `cryptography`: the store is opened (at each start), sealed (at each rotation) and each
    deployment's signature checked in the crypto child. The children that fetched and sealed
    did load botocore and cryptography: the check can see them where they happen. Nor does the
    core load `rich` (structlog's traceback and colour extra), installed here by the test extra
    (amqtt -> typer -> rich).
    """
    assert importlib.util.find_spec("rich") is not None, "rich is not installed: check is blind"
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    refresh = "[refresh]\ninterval_seconds = 1\n"
    with running_env(tmp_path, broker, moto, sm, extra=refresh) as env:
        arn_db, _, value_db = env.create_secret("imports/db")
        env.add_labelled_version(arn_db, "Label1")
        arn_key, _, _ = env.create_secret("imports/key")
        path, digest = build_package(tmp_path / "app.zip")
        s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url)
        s3.create_bucket(Bucket="functions")
        s3.put_object(Bucket="functions", Key="app.zip", Body=path.read_bytes())
        functions = [
            function(
                "reader",
                "app.function_handler",
                {"Uri": path.as_uri(), "Sha256": digest},
                policies=["db", "key"],
            ),
            function(
                "ctx",
                "app.context_fields",
                {"Uri": "s3://functions/app.zip", "Sha256": digest},
            ),
        ]
        resources = [secret_resource("db", arn_db, ["Label1"]), secret_resource("key", arn_key)]
        for kind in ("NewDeployment", "Redeployment"):
            deployment = env.operator.deploy(resources, functions=functions, deployment_type=kind)
            assert env.operator.final_status(deployment)["DeploymentStatus"] == "Success"
        assert invoke(env, "reader", {"SecretId": "imports/db"})["SecretString"] == value_db
        assert invoke(env, "ctx", {})["function_name"] == "ctx"

        rotated = f"rotated-{uuid.uuid4().hex}"
        env.values.append(rotated)
        LEAKS.add_secret(rotated, "imports/db (rotated)")
        sm.put_secret_value(SecretId=arn_db, SecretString=rotated)
        env.core.wait_for_event("refresh.rotated")
        assert invoke(env, "reader", {"SecretId": "imports/db"})["SecretString"] == rotated

        env.core.stop()
        env.core.start()
        assert env.core.wait_for_event("core.store_loaded", after=1)["secrets"] == 2
        assert invoke(env, "reader", {"SecretId": "imports/db"})["SecretString"] == rotated
        own, relayed = imported_by(env.core.log_text())

    assert "edge.core" in own, "the core's stderr holds no import record: the check is blind"
    assert top_level(own).isdisjoint(SDK_PACKAGES), sorted(top_level(own) & set(SDK_PACKAGES))
    assert "cryptography" not in top_level(own), sorted(m for m in own if "cryptography" in m)
    assert {"botocore", "aiobotocore", "cryptography"} <= top_level(relayed)
    assert own.isdisjoint(STRUCTLOG_EXTRAS), sorted(own & STRUCTLOG_EXTRAS)


def resource(arn: str, *labels: str) -> SecretResource:
    name = arn.rsplit(":", 1)[-1]
    return SecretResource(resource_id=f"res-{name}", name=name, arn=arn, additional_labels=labels)


def source_on(url: str) -> ProcessSecretSource:
    return ProcessSecretSource(
        AwsTarget(region=TEST_REGION, endpoint_url=url), settings=FetchSettings()
    )


async def test_the_childs_answers_errors_and_counts_reach_the_core(moto: MotoServer, sm: Any):
    """Values, incremental fetch, per-operation counts and the exact error classes cross."""
    arn = sm.create_secret(Name="child/db", SecretString="child-pw-current")["ARN"]
    sm.put_secret_value(SecretId=arn, SecretString="child-pw-next", VersionStages=["Label1"])
    source = source_on(moto.url)

    got = await source.fetch([resource(arn, "Label1")])
    secret = got[f"res-{arn.rsplit(':', 1)[-1]}"]
    assert secret.version_for("AWSCURRENT").secret_string == "child-pw-current"
    assert secret.version_for("Label1").secret_string == "child-pw-next"
    assert source.calls["BatchGetSecretValue"] == 1
    assert source.calls["GetSecretValue"] == 1

    held = {arn: dict(secret.versions)}
    before = source.calls.copy()
    again = await source.fetch([resource(arn, "Label1")], held=held)
    assert again == got
    assert source.calls - before == {"DescribeSecret": 1}

    with pytest.raises(StagingLabelNotFoundError) as label_error:
        await source.fetch([resource(arn, "NoSuchLabel")])
    assert (label_error.value.arn, label_error.value.label) == (arn, "NoSuchLabel")

    gone = arn.replace("child/db", "child/gone")
    with pytest.raises(SecretNotFoundError) as missing:
        await source.fetch([resource(gone)])
    assert missing.value.arn == gone

    described, errors = await source.describe([arn, gone])
    assert set(described[arn].stages) == set(secret.versions)
    assert isinstance(errors[gone], SecretNotFoundError)


async def test_a_child_that_dies_without_an_answer_is_a_service_error(
    moto: MotoServer, sm: Any, monkeypatch: pytest.MonkeyPatch
):
    """A fetch process that can't run fails the fetch with SecretServiceError, naming a secret."""
    arn = sm.create_secret(Name="child/crash", SecretString="crash-pw")["ARN"]
    monkeypatch.setattr(fetch_process, "FETCHER_MODULE", "edge.secrets.no_such_fetcher")
    with pytest.raises(SecretServiceError) as failed:
        await source_on(moto.url).fetch([resource(arn)])
    assert failed.value.arn == arn
    assert "ended without an answer" in str(failed.value)
    assert failed.value.error_code is None


async def test_a_child_that_hangs_is_killed_at_the_deadline(
    moto: MotoServer, sm: Any, monkeypatch: pytest.MonkeyPatch
):
    """A child that never answers fails the fetch at the deadline, and is gone afterwards."""
    arn = sm.create_secret(Name="child/hang", SecretString="hang-pw")["ARN"]
    monkeypatch.setattr(fetch_process, "FETCHER_MODULE", "tests.support.hanging_fetcher")
    relayed = RecordingLogger([])
    source = ProcessSecretSource(
        AwsTarget(region=TEST_REGION, endpoint_url=moto.url),
        settings=FetchSettings(deadline_seconds=1),
        logger=relayed,
    )
    started = time.monotonic()
    with pytest.raises(FetchDeadlineError) as failed:
        await source.fetch([resource(arn, "Label1")])
    elapsed = time.monotonic() - started
    assert (failed.value.deadline_seconds, failed.value.done, failed.value.total) == (1, 0, 2)
    assert 1 <= elapsed < 1 + fetch_process.ANSWER_GRACE_SECONDS + 1
    pids = relayed.pids("hanging-fetcher-pid")
    assert len(pids) == 1
    assert not Path(f"/proc/{pids[0]}").exists()
