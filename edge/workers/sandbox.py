# SPDX-License-Identifier: Apache-2.0
"""What the core hides from its workers, and the confinement plan each worker carries out.

The core knows which of its files hold what a worker must never see: the state directory (the
store, the inbox, the audit log, the socket directory), the core key or its PIN file, the MQTT
client key, the config, and the AWS credentials botocore reads. `Sandbox.from_config` gathers
them once; `plan` turns them into the JSON a worker reads from EDGE_SANDBOX and hands to
`edge.workers.landlock.confine` before any function code runs.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge.config import Config
from edge.errors import SandboxUnavailableError
from edge.secrets.pkcs11 import TokenKeyRef
from edge.workers.landlock import landlock_abi

SandboxMode = Literal["auto", "required", "off"]
#: Where the `edge` package (the worker runtime included) is imported from: on every worker's
#: path, read-only to all of them.
EDGE_ROOT = Path(__file__).resolve().parents[2]


def _real(path: Path) -> str:
    return os.path.realpath(path)


def aws_credential_paths() -> tuple[Path, ...]:
    """The shared credentials and config files botocore would read for the core."""
    paths = [Path.home() / ".aws"]
    for variable in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        value = os.environ.get(variable)
        if value:
            paths.append(Path(value).expanduser())
    return tuple(paths)


def hidden_paths(config: Config) -> tuple[Path, ...]:
    """Every path of the core's that a worker may neither read nor write."""
    paths: list[Path] = [config.core.state_dir, config.path, *aws_credential_paths()]
    key = config.core.private_key
    if isinstance(key, TokenKeyRef):
        if key.pin_source is not None:
            paths.append(key.pin_source)
    else:
        paths.append(key)
    if config.mqtt.key_file is not None:
        paths.append(config.mqtt.key_file)
    paths.extend(config.workers.hidden_paths)
    return tuple(paths)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How the core confines its workers; `plan` gives one worker's EDGE_SANDBOX value."""

    mode: SandboxMode
    hidden: tuple[str, ...]
    protected: tuple[str, ...]
    writable: tuple[str, ...]
    #: The kernel's Landlock ABI (0: none); probed once when the core starts.
    abi: int

    @classmethod
    def create(
        cls,
        *,
        mode: SandboxMode,
        hidden: tuple[Path, ...],
        protected: tuple[Path, ...],
        writable: tuple[Path, ...],
    ) -> Sandbox:
        """Resolve the paths and probe the kernel; `required` without Landlock is an error."""
        abi = landlock_abi() if mode != "off" else 0
        if mode == "required" and abi == 0:
            raise SandboxUnavailableError("this kernel has no Landlock")
        interpreters = {Path(sys.prefix), Path(sys.base_prefix), EDGE_ROOT}
        return cls(
            mode=mode,
            hidden=tuple(sorted({_real(p) for p in hidden})),
            protected=tuple(sorted({_real(p) for p in (*protected, *interpreters)})),
            writable=tuple(sorted({_real(p) for p in writable})),
            abi=abi,
        )

    @classmethod
    def from_config(cls, config: Config) -> Sandbox:
        """The core's sandbox: its own secrets hidden, code and interpreters read-only."""
        return cls.create(
            mode=config.workers.sandbox,
            hidden=hidden_paths(config),
            protected=(config.core.code_dir, config.workers.python.parent),
            writable=config.workers.writable_paths,
        )

    @property
    def confines(self) -> bool:
        """Whether workers get Landlock rules (not just a capability drop)."""
        return self.mode != "off" and self.abi > 0

    def plan(self, *, root_worker: bool) -> str | None:
        """The EDGE_SANDBOX value for one worker (None: sandbox off)."""
        if self.mode == "off":
            return None
        return json.dumps(
            {
                "landlock": self.abi > 0,
                "required": self.mode == "required",
                "hidden": self.hidden,
                "protected": self.protected,
                "writable": self.writable,
                # A worker left at uid 0 would otherwise keep the power to step around rules.
                "drop_capabilities": root_worker,
            }
        )
