# SPDX-License-Identifier: Apache-2.0
"""The core's settings: one frozen dataclass per section of its TOML configuration.

`edge.config` reads and checks the file into these; every part of the core takes the settings
of its own section and nothing else. Defaults here are the documented ones
(`config.example.toml`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge.secrets.keyref import TokenKeyRef

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
#: AWS IoT's limit for thing names; the name is also a topic level and the MQTT client id.
MAX_THING_NAME_LENGTH = 128
#: Where a worker may write unless `[workers] writable_paths` says otherwise (V1 gave /tmp).
DEFAULT_WRITABLE_PATHS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))  # noqa: S108


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """`[core]`: who this core is and where it keeps its state."""

    thing_name: str
    state_dir: Path
    #: A PEM key file, or a key in a PKCS#11 token (`private_key = "pkcs11:..."`, with
    #: `pkcs11_module` and `public_key`); a token key's PIN is never in its repr.
    private_key: Path | TokenKeyRef
    #: Unpacked function code. Outside the 0700 state directory, so workers that run as
    #: another user (RunAs) can read their code; code is not secret.
    code_dir: Path = Path("functions")
    #: `auto` (uvloop when installed), `uvloop` or `asyncio` (edge/eventloop.py).
    event_loop: str = "auto"


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """`[mqtt]`: the broker the core takes deployments from."""

    url: str
    host: str
    port: int
    tls: bool
    topic_prefix: str = "edge"
    ca_file: Path | None = None
    cert_file: Path | None = None
    #: A PEM key file, or a key in a PKCS#11 token (`key_file = "pkcs11:..."`, with
    #: `[core] pkcs11_module`) that OpenSSL's pkcs11-provider signs the handshake with.
    key_file: Path | TokenKeyRef | None = None
    client_id: str | None = None
    keepalive_seconds: int = 60
    reconnect_max_seconds: float = 30.0

    def deployments_topic(self, thing_name: str) -> str:
        """Topic the core subscribes to for deployment documents."""
        return f"{self.topic_prefix}/things/{thing_name}/deployments"

    def status_topic(self, thing_name: str) -> str:
        """Topic the core publishes deployment status documents to."""
        return f"{self.topic_prefix}/things/{thing_name}/deployments/status"


@dataclass(frozen=True, slots=True)
class IotCredentialSettings:
    """`[aws] credentials = "iot"`: where and as whom the core exchanges its certificate."""

    #: `https://host[:port]` of the account's `iot:CredentialProvider` endpoint.
    endpoint: str
    role_alias: str
    thing_name: str
    cert_file: Path
    key_file: Path | TokenKeyRef
    #: CA bundle that verifies the endpoint; None: the system's trust store.
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AwsSettings:
    """`[aws]`: where Secrets Manager is, and where the core's AWS credentials come from."""

    region: str
    endpoint_url: str | None = None
    #: Short-lived credentials from the AWS IoT credentials provider (`credentials = "iot"`);
    #: None: botocore's usual chain (environment, ~/.aws, instance role).
    iot: IotCredentialSettings | None = None


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """`[fetch]`: how hard and how fast secrets are fetched (`edge.secrets.fetch`).

    Attributes:
        concurrency: Most API calls in flight at once (and the HTTP connection pool size).
        deadline_seconds: Limit for one whole fetch, retries and backoff included.
        max_attempts: Attempts per API call, the first included (botocore's
            `total_max_attempts`); 1 disables retries.
        use_batch: Fetch `AWSCURRENT` values with BatchGetSecretValue, 20 secrets per call.
    """

    concurrency: int = 16
    deadline_seconds: float = 120.0
    max_attempts: int = 5
    use_batch: bool = True

    def __post_init__(self) -> None:
        """Reject settings that would hang or never call."""
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if not self.deadline_seconds > 0:
            raise ValueError(f"deadline_seconds must be positive, not {self.deadline_seconds}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")


@dataclass(frozen=True, slots=True)
class LogSettings:
    """`[log]`: structured log output on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    #: "auto": console on a terminal, JSON lines otherwise.
    format: Literal["auto", "console", "json"] = "auto"


@dataclass(frozen=True, slots=True)
class DeploymentSettings:
    """`[deployments]`: whose signed deployment documents the core accepts."""

    #: Public keys (PEM, Ed25519) whose signatures are trusted, e.g. `edge cloud init`'s .pub.
    trusted_keys: tuple[Path, ...] = ()
    #: Development only: also accept unsigned documents (logged loudly).
    allow_unsigned: bool = False


@dataclass(frozen=True, slots=True)
class WorkerUser:
    """`[workers] default_user`, looked up: its name (for messages), uid and primary gid."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """`[workers]`: how function worker processes are started."""

    #: The Python that runs workers. Default: the core's own. Set it when workers run as
    #: another user (RunAs) who can't execute the core's interpreter.
    python: Path = Path(sys.executable)
    #: "auto": confine workers with Landlock where the kernel has it (a warning where not);
    #: "required": refuse to start a worker unconfined; "off": no confinement.
    sandbox: Literal["auto", "required", "off"] = "auto"
    #: Where workers may create and change files (besides /dev/null); subtrees holding a
    #: hidden or protected path are split around it.
    writable_paths: tuple[Path, ...] = DEFAULT_WRITABLE_PATHS
    #: More paths no worker may read or write, besides those the core hides itself.
    hidden_paths: tuple[Path, ...] = ()
    #: The unprivileged user a root core runs functions without RunAs as (None: uid 0 with
    #: every capability dropped).
    default_user: WorkerUser | None = None
    #: Directories `file://` function code may be copied from (none: `file://` is refused).
    local_code_dirs: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """`[audit]`: the local log of secret reads (edge/audit.py)."""

    enabled: bool = True
    #: Seconds between appends of the counted reads to the file.
    flush_seconds: float = 1.0
    #: Size in bytes past which the file is rotated.
    max_bytes: int = 10 * 1024 * 1024
    #: Rotated files kept (audit.jsonl.1 … .N); 0 keeps none.
    backups: int = 5


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """`[metrics]`: the Prometheus endpoint (edge/metrics.py)."""

    #: (host, port) to serve `/metrics` on; None: no endpoint.
    listen: tuple[str, int] | None = None
    #: Reads served from a store older than this count as stale reads.
    stale_after_seconds: float = 86400.0


@dataclass(frozen=True, slots=True)
class RefreshSettings:
    """`[refresh]`: rotation-aware refresh of deployed secrets (edge/secrets/refresh.py)."""

    #: Seconds between checks of the deployed secrets' stages (jittered ±10%); 0: off.
    interval_seconds: float = 0.0
    #: Most DescribeSecret requests a second (Secrets Manager allows 50 per account+region).
    max_calls_per_second: float = 10.0
    #: Least seconds between two `Refresh: true` hinted refreshes of one secret.
    hint_min_interval_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    path: Path
    core: CoreSettings
    mqtt: MqttSettings
    aws: AwsSettings
    fetch: FetchSettings
    log: LogSettings
    deployments: DeploymentSettings = DeploymentSettings()
    workers: WorkerSettings = WorkerSettings()
    audit: AuditSettings = AuditSettings()
    metrics: MetricsSettings = MetricsSettings()
    refresh: RefreshSettings = RefreshSettings()
