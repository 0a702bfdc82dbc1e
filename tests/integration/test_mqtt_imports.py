"""A running core never loads `urllib.request`, which paho-mqtt imports for its proxy settings.

paho imports it at the top of its client module (`http.client`, `email`, `tempfile` and more,
about 2.5 MB) and uses it only to look up a proxy, which it does only with PySocks installed.
`edge.mqtt.imports` hands paho a lazy module instead; these tests read the core's own import
record (see tests/support/imports.py) over plain MQTT and over TLS with a client certificate,
after a deployment of secrets and a function has been applied and the function invoked.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from edge.fixtures.core import secret_resource
from edge.fixtures.services import Mosquitto, MotoServer
from tests.support.env import Env, running_env
from tests.support.functions import build_package, function, invoke
from tests.support.imports import imported_by
from tests.support.tls import make_pki, run_tls_mosquitto

pytestmark = pytest.mark.network

#: What `urllib.request`'s own code imports: any of them in the record means it ran.
URLLIB_REQUEST_BODY = {"urllib.error", "urllib.response", "http.client", "email", "email.parser"}


@pytest.fixture(autouse=True)
def _import_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cores started by these tests write CPython's import record into their log."""
    # With PySocks, paho looks a proxy up on every connect, and the module is loaded on purpose.
    assert importlib.util.find_spec("socks") is None, "PySocks is installed: the check is moot"
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")


def deploy_and_check(env: Env, tmp_path: Path) -> None:
    """Apply secrets and a function, invoke it, and check what the core imported."""
    arn, _, value = env.create_secret("imports/db")
    path, digest = build_package(tmp_path / "app.zip")
    reader = function(
        "reader", "app.function_handler", {"Uri": path.as_uri(), "Sha256": digest}, policies=["db"]
    )
    deployment = env.operator.deploy([secret_resource("db", arn)], functions=[reader])
    assert env.operator.final_status(deployment)["DeploymentStatus"] == "Success"
    assert invoke(env, "reader", {"SecretId": "imports/db"})["SecretString"] == value
    own, _ = imported_by(env.core.log_text())
    assert "edge.mqtt.imports" in own, "the core's log holds no import record: the check is blind"
    # paho did import it, as a module whose code never ran.
    assert "urllib.request" in own
    ran = sorted(own & URLLIB_REQUEST_BODY)
    assert not ran, f"urllib.request's code ran in the core: it imported {ran}"


def test_a_core_over_plain_mqtt_never_loads_urllib_request(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    with running_env(tmp_path, broker, moto, sm) as env:
        assert env.core.wait_for_event("mqtt.connected")["url"].startswith("mqtt://")
        deploy_and_check(env, tmp_path)


def test_a_core_over_tls_never_loads_urllib_request(
    tmp_path: Path, moto: MotoServer, sm: Any
) -> None:
    pki = make_pki(tmp_path / "pki")
    mqtt = (
        f'ca_file = "{pki.ca.cert}"\ncert_file = "{pki.client.cert}"\n'
        f'key_file = "{pki.client.key}"\n'
    )
    with (
        run_tls_mosquitto(tmp_path / "mosquitto-tls", pki) as broker,
        running_env(
            tmp_path, broker, moto, sm, mqtt=mqtt, operator_tls=pki.client_context()
        ) as env,
    ):
        assert env.core.wait_for_event("mqtt.connected")["url"].startswith("mqtts://")
        deploy_and_check(env, tmp_path)
