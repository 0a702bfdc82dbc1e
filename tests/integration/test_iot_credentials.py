"""`[aws] credentials = "iot"`: a core without AWS keys fetches with its certificate's."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.proxy_thread import ProxyThread, proxy_thread
from edge.fixtures.core import secret_resource
from edge.fixtures.services import Mosquitto, MotoServer
from tests.support.env import Env, running_env
from tests.support.iot_credentials import CredentialsProvider, run_credentials_provider
from tests.support.tls import Pki, make_pki

ROLE_ALIAS = "edge-core-token-exchange"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """The account's CA, the provider's server certificate and the thing's certificate."""
    return make_pki(tmp_path / "pki")


@pytest.fixture
def thing() -> str:
    return f"core-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def provider(pki: Pki, thing: str) -> Iterator[CredentialsProvider]:
    with run_credentials_provider(pki, role_alias=ROLE_ALIAS, thing_name=thing) as running:
        yield running


@pytest.fixture
def recorder(moto: MotoServer) -> Iterator[ProxyThread]:
    """Moto behind a proxy that counts requests by the access key id they are signed with."""
    with proxy_thread(moto.url) as proxy:
        yield proxy


@pytest.fixture
def iot_env(  # noqa: PLR0917 - pytest passes fixtures by name
    tmp_path: Path,
    broker: Mosquitto,
    moto: MotoServer,
    sm: Any,
    pki: Pki,
    thing: str,
    provider: CredentialsProvider,
    recorder: ProxyThread,
) -> Iterator[Env]:
    """A running core whose only AWS credentials come from the loopback IoT provider."""
    aws = (
        f'credentials = "iot"\niot_credentials_endpoint = "{provider.url}"\n'
        f'role_alias = "{ROLE_ALIAS}"\niot_cert_file = "{pki.client.cert}"\n'
        f'iot_key_file = "{pki.client.key}"\niot_ca_file = "{pki.ca.cert}"\n'
    )
    with running_env(
        tmp_path, broker, moto, sm, thing_name=thing, endpoint_url=recorder.url, aws=aws
    ) as env:
        yield env


def deploy_one(env: Env, name: str) -> dict[str, Any]:
    arn, _, _ = env.create_secret(name)
    return env.operator.final_status(env.operator.deploy([secret_resource("r", arn)]))


def assert_no_credential_written_or_logged(env: Env, provider: CredentialsProvider) -> None:
    shown = env.all_output() + "".join(
        p.read_bytes().decode("latin-1") for p in env.root.rglob("*") if p.is_file()
    )
    for issued in provider.issued:
        assert issued.secret_access_key not in shown
        assert issued.session_token not in shown


def test_core_fetches_with_the_certificates_credentials_and_refreshes_them(
    iot_env: Env, provider: CredentialsProvider, recorder: ProxyThread
) -> None:
    """Secrets Manager sees only the provider's keys, and a new set before the old one expires.

    Credentials valid 12 minutes are inside botocore's 15-minute refresh window, so the next
    deployment exchanges the certificate again and signs with the new set.
    """
    provider.lifetime = dt.timedelta(minutes=12)
    assert deploy_one(iot_env, "iot/first")["DeploymentStatus"] == "Success"
    first = provider.wait_issued(1)
    seen = recorder.do(lambda p: dict(p.access_keys))
    assert set(seen) == {first[0].access_key_id}

    assert deploy_one(iot_env, "iot/second")["DeploymentStatus"] == "Success"
    issued = provider.wait_issued(2)
    seen = recorder.do(lambda p: dict(p.access_keys))
    assert set(seen) <= {i.access_key_id for i in issued}
    assert len(seen) >= 2, "the second deployment signed with the first, expiring, credentials"
    assert "testing" not in seen  # the environment's keys are never used
    assert_no_credential_written_or_logged(iot_env, provider)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("revoked", "refused the certificate"),
        ("no-alias", f"role alias {ROLE_ALIAS} does not exist"),
    ],
)
def test_refused_certificate_or_missing_alias_fails_the_deployment_with_the_fix(
    iot_env: Env, provider: CredentialsProvider, recorder: ProxyThread, mode: str, message: str
) -> None:
    """A revoked certificate or a missing role alias ends in one Failure that says what to do.

    The core keeps running and nothing reaches Secrets Manager.
    """
    provider.mode = mode  # type: ignore[assignment]
    status = deploy_one(iot_env, f"iot/{mode}")
    assert status["DeploymentStatus"] == "Failure"
    assert message in status["ErrorMessage"]
    assert recorder.do(lambda p: sum(p.access_keys.values())) == 0
    assert iot_env.core.proc is not None
    assert iot_env.core.proc.poll() is None
