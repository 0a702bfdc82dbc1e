"""A test's world: broker, Secrets Manager, a configured core process and an operator."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.core import CoreProcess, Operator, edge_cli
from tests.support.leaks import LEAKS
from tests.support.services import Mosquitto, MotoServer


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
