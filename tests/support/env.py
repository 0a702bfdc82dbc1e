"""A test's world: broker, Secrets Manager, a configured core process and an operator."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.fixtures.core import CoreProcess, Operator, edge_cli, write_config
from edge.fixtures.services import Mosquitto, MotoServer
from tests.support.leaks import LEAKS


@dataclass
class Env:
    """One test's world: broker, Secrets Manager, a configured core and an operator."""

    root: Path
    broker: Mosquitto
    moto: MotoServer
    sm: Any
    config: Path
    core: CoreProcess
    operator: Operator
    values: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def store_path(self) -> Path:
        return self.state_dir / "secrets.store"

    def create_secret(self, name: str, *, binary: bool = False) -> tuple[str, str, str | bytes]:
        """Create a secret with a random value; return (ARN, VersionId, value)."""
        if binary:
            value: str | bytes = secrets.token_bytes(24)
            resp = self.sm.create_secret(Name=name, SecretBinary=value)
            self.values.append(base64.b64encode(value).decode())
            LEAKS.add_secret(value, name)
        else:
            value = f"pw-{secrets.token_urlsafe(18)}"
            resp = self.sm.create_secret(Name=name, SecretString=value)
            self.values.append(value)
            LEAKS.add_secret(value, name)
        return resp["ARN"], resp["VersionId"], value

    def add_labelled_version(self, arn: str, label: str) -> tuple[str, str]:
        """Put a new version carrying only `label`; return (VersionId, value)."""
        value = f"old-{secrets.token_urlsafe(18)}"
        resp = self.sm.put_secret_value(SecretId=arn, SecretString=value, VersionStages=[label])
        self.values.append(value)
        LEAKS.add_secret(value, f"{arn} ({label})")
        return resp["VersionId"], value

    def listing(self) -> dict[str, Any]:
        result = edge_cli("secrets", "list", "--config", str(self.config), "--json")
        assert result.returncode == 0, result.stderr
        self.cli_output.append(result.stdout + result.stderr)
        return json.loads(result.stdout)

    cli_output: list[str] = field(default_factory=list)

    def all_output(self) -> str:
        return self.core.log_text() + "".join(self.cli_output)


@contextlib.contextmanager
def running_env(
    tmp_path: Path,
    broker: Mosquitto,
    moto: MotoServer,
    sm: Any,
    *,
    thing_name: str | None = None,
    endpoint_url: str | None = None,
    operator_tls: ssl.SSLContext | None = None,
    **config: Any,
) -> Iterator[Env]:
    """A core process (initialised, running, subscribed) and an operator on the test's broker.

    The core fetches from `endpoint_url` (default: moto); `config` goes to `write_config`
    (local_code_dirs, aws, mqtt, say). The operator connects with `operator_tls` if given (to
    a broker that speaks only TLS).
    """
    thing = thing_name or f"core-{uuid.uuid4().hex[:8]}"
    config_path = write_config(
        tmp_path / "core.toml",
        thing_name=thing,
        mqtt_url=broker.url,
        endpoint_url=endpoint_url or moto.url,
        **config,
    )
    init = edge_cli("init", "--config", str(config_path))
    assert init.returncode == 0, init.stderr
    core = CoreProcess(config=config_path, log_path=tmp_path / "core.log")
    operator = Operator(port=broker.port, prefix="edge", thing=thing, tls=operator_tls)
    e = Env(
        root=tmp_path,
        broker=broker,
        moto=moto,
        sm=sm,
        config=config_path,
        core=core,
        operator=operator,
    )
    try:
        core.start()
        core.wait_for_event("mqtt.connected")
        operator.connect()
        yield e
    finally:
        # Also when the test failed: a core left running would outlive the session.
        operator.close()
        if core.proc is not None:
            core.stop()
    # The rule every feature keeps: no secret value in any log or CLI output, ever.
    output = e.all_output()
    for value in e.values:
        assert value not in output, "a secret value leaked into the logs"
