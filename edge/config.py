# SPDX-License-Identifier: Apache-2.0
"""The core's TOML configuration: parsed into frozen dataclasses, validated, clear errors.

Every key is documented in `config.example.toml`. Unknown keys and wrong types are errors that
name the key, because a typo in a field device's config must not silently fall back to a default.
Relative paths are resolved against the directory of the config file, so a config and its state
can be moved together.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from edge.errors import ConfigError, ConfigPermissionsError
from edge.secrets.keyref import TokenKeyRef, is_pkcs11_uri, parse_token_key_uri

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
#: AWS IoT's limit for thing names; the name is also a topic level and the MQTT client id.
MAX_THING_NAME_LENGTH = 128
#: Mode bits that let users other than the owner change the config file. Whoever can change
#: it chooses the core's key, broker, trusted signers and code sources, so they are refused.
_OTHERS_WRITE_BITS = 0o022
#: Any access by group or others: refused when the file holds a secret (a PKCS#11 pin-value).
_OTHERS_ANY_BITS = 0o077
#: Where a worker may write unless `[workers] writable_paths` says otherwise (V1 gave /tmp).
DEFAULT_WRITABLE_PATHS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))  # noqa: S108
_T = TypeVar("_T")


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


class _Section:
    """Reads one TOML table, type-checking each key and remembering which were used."""

    def __init__(
        self, path: Path, name: str, table: object, *, example: str = "config.example.toml"
    ) -> None:
        self.path = path
        self.name = name
        self.example = example
        if not isinstance(table, dict):
            raise ConfigError(str(path), "must be a table", key=f"[{name}]")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def _get(self, key: str, kind: type[_T], what: str) -> _T | None:
        self.used.add(key)
        if key not in self.table:
            return None
        value = self.table[key]
        # bool is an int subclass in Python; TOML keeps them apart, so must we.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(
                str(self.path), f"must be {what}, not {type(value).__name__}", key=self.key(key)
            )
        return value

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(str(self.path), problem, key=self.key(key))

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._get(key, str, "a string")
        if value is None:
            if required:
                raise self.error(key, "is required")
            return default
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self._get(key, int, "an integer")
        if value is None:
            return default
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, not {value}")
        return value

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        self.used.add(key)
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {type(value).__name__}")
        if not low <= value <= high:
            raise self.error(key, f"must be between {low:g} and {high:g}, not {value}")
        return float(value)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key, bool, "true or false")
        return default if value is None else value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def path_value(self, key: str, default: Path | None = None) -> Path | None:
        value = self.string(key)
        if value is None:
            return default
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], f"is not a known key (see {self.example})")


_EXAMPLE = "config.example.toml"
_SECTIONS = (
    "core",
    "mqtt",
    "aws",
    "fetch",
    "log",
    "deployments",
    "workers",
    "audit",
    "metrics",
    "refresh",
)


def read_toml(path: Path | str, *, example: str) -> tuple[dict[str, Any], Path]:
    """Read a TOML config file; return its tables and its resolved path.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML (the message names `example`).
    """
    raw, resolved, _ = _read_toml(path, example=example)
    return raw, resolved


@dataclass(frozen=True, slots=True)
class _FileFacts:
    """What the opened config file was: its mode and owner, and whether anyone may change it."""

    info: os.stat_result
    read_only_mount: bool


def _read_toml(path: Path | str, *, example: str) -> tuple[dict[str, Any], Path, _FileFacts]:
    path = Path(path)
    try:
        with path.open("rb") as file:
            # Checked on the descriptor that is read, so a swapped file can't pass for another.
            facts = _FileFacts(
                info=os.fstat(file.fileno()),
                read_only_mount=bool(os.fstatvfs(file.fileno()).f_flag & os.ST_RDONLY),
            )
            raw = tomllib.loads(file.read().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), f"no such file; copy {example} to start") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"can't be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"is not valid TOML: {exc}") from None
    return raw, path.resolve(), facts


def check_config_file(path: Path, facts: _FileFacts, *, holds_secret: bool) -> None:
    """Refuse a config file that other users can change, or read while it holds a secret.

    The owner and write checks are skipped on a read-only mount (a container's `:ro` bind
    mount, whose owner is a host user): nobody on this system can change such a file.

    Raises:
        ConfigPermissionsError: The message names the file, its mode or owner, and the command
            that fixes it.
    """
    mode = stat.S_IMODE(facts.info.st_mode)
    uid, me = facts.info.st_uid, os.geteuid()
    if not facts.read_only_mount:
        if uid not in {me, 0}:
            raise ConfigPermissionsError(
                str(path),
                f"is owned by uid {uid}, neither the core's user (uid {me}) nor root, so that "
                "user can change what the core trusts",
                f"chown {me} {path}",
            )
        if mode & _OTHERS_WRITE_BITS:
            raise ConfigPermissionsError(
                str(path),
                f"has mode {mode:04o}: other users can change what the core trusts",
                f"chmod {mode & ~_OTHERS_WRITE_BITS:04o} {path}",
            )
    if holds_secret and mode & _OTHERS_ANY_BITS:
        raise ConfigPermissionsError(
            str(path),
            f"has mode {mode:04o} and holds a PIN (a pkcs11: URI's pin-value): other users "
            "can read it (or use pin-source, a file of its own)",
            f"chmod 0600 {path}",
        )


def open_sections(
    raw: dict[str, Any], *, path: Path, names: tuple[str, ...], example: str
) -> dict[str, _Section]:
    """One reader per known table (absent ones empty); an unknown table is an error."""
    for name in raw:
        if name not in names:
            raise ConfigError(str(path), f"is not a known section (see {example})", key=f"[{name}]")
    return {name: _Section(path, name, raw.get(name, {}), example=example) for name in names}


def load_config(path: Path | str) -> Config:
    """Read and validate a config file, and check who else may change or read it.

    Raises:
        ConfigPermissionsError: Another user can change the file (its owner, group or other
            write bits), or read it while it holds a PIN.
        ConfigError: the file is missing, not TOML, or a key is unknown, missing or wrong.
    """
    raw, resolved, facts = _read_toml(path, example=_EXAMPLE)
    config = parse_config(raw, path=resolved)
    keys = token_keys(config.core, config.mqtt, config.aws)
    check_config_file(
        resolved,
        facts,
        holds_secret=any(isinstance(k, TokenKeyRef) and k.pin is not None for k in keys),
    )
    return config


def parse_config(raw: dict[str, Any], *, path: Path) -> Config:
    """Validate an already-parsed TOML document (see `load_config`)."""
    sections = open_sections(raw, path=path, names=_SECTIONS, example=_EXAMPLE)
    core = _core(sections["core"])
    module = sections["core"].path_value("pkcs11_module")
    mqtt = _mqtt(sections["mqtt"], module=module)
    aws = _core_aws(sections["aws"], thing_name=core.thing_name, mqtt=mqtt, module=module)
    if module is not None and not any(
        isinstance(k, TokenKeyRef) for k in token_keys(core, mqtt, aws)
    ):
        raise sections["core"].error(
            "pkcs11_module",
            'only applies to a private_key = "pkcs11:..." or [mqtt] key_file = "pkcs11:..." URI',
        )
    config = Config(
        path=path,
        core=core,
        mqtt=mqtt,
        aws=aws,
        fetch=_fetch(sections["fetch"]),
        log=_log(sections["log"]),
        deployments=_deployments(sections["deployments"]),
        workers=_workers(sections["workers"]),
        audit=_audit(sections["audit"]),
        metrics=_metrics(sections["metrics"]),
        refresh=_refresh(sections["refresh"]),
    )
    for section in sections.values():
        section.finish()
    return config


def _core(s: _Section) -> CoreSettings:
    thing_name = s.string("thing_name", required=True)
    assert thing_name is not None  # noqa: S101 - required=True guarantees it; narrows the type
    # Thing names become MQTT topic levels: wildcards or separators would cross-talk.
    if any(ch in thing_name for ch in "/+#") or len(thing_name) > MAX_THING_NAME_LENGTH:
        raise s.error("thing_name", "must be at most 128 characters without '/', '+' or '#'")
    state_dir = s.path_value("state_dir", s.path.parent / "state")
    assert state_dir is not None  # noqa: S101 - has a default
    private_key = _private_key(s, state_dir)
    code_dir = s.path_value("code_dir", s.path.parent / "functions")
    assert code_dir is not None  # noqa: S101 - has a default
    return CoreSettings(
        thing_name=thing_name, state_dir=state_dir, private_key=private_key, code_dir=code_dir
    )


def _private_key(s: _Section, state_dir: Path) -> Path | TokenKeyRef:
    """`private_key`: a key file, or a PKCS#11 URI with `pkcs11_module` and `public_key`."""
    raw = s.string("private_key")
    module = s.path_value("pkcs11_module")
    public_key = s.path_value("public_key")
    if raw is None or not is_pkcs11_uri(raw):
        if "public_key" in s.table:
            raise s.error("public_key", 'only applies to a private_key = "pkcs11:..." URI')
        path = s.path_value("private_key", state_dir / "core.key")
        assert path is not None  # noqa: S101 - has a default
        return path
    try:
        return parse_token_key_uri(
            raw, base_dir=s.path.parent, module=module, public_key=public_key
        )
    except ValueError as exc:
        # The message quotes the URI with any pin-value masked, never the PIN.
        raise s.error("private_key", str(exc)) from None


def _mqtt(s: _Section, *, module: Path | None = None) -> MqttSettings:
    url = s.string("url", f"mqtt://127.0.0.1:{DEFAULT_MQTT_PORT}")
    assert url is not None  # noqa: S101 - has a default
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
        raise s.error("url", f"must look like mqtt://host:port or mqtts://host:port, not {url!r}")
    try:
        port = parts.port or (DEFAULT_MQTTS_PORT if parts.scheme == "mqtts" else DEFAULT_MQTT_PORT)
    except ValueError:
        raise s.error("url", f"has an invalid port: {url!r}") from None
    prefix = s.string("topic_prefix", "edge")
    assert prefix is not None  # noqa: S101 - has a default
    if any(ch in prefix for ch in "+#") or prefix.startswith("/") or prefix.endswith("/"):
        raise s.error("topic_prefix", "must not contain '+' or '#' nor start or end with '/'")
    tls = parts.scheme == "mqtts"
    ca_file, cert_file = s.path_value("ca_file"), s.path_value("cert_file")
    key_file = _key_file(s, "key_file", module)
    if not tls and (ca_file or cert_file or key_file):
        raise s.error("url", "ca_file, cert_file and key_file need an mqtts:// url")
    if (cert_file is None) != (key_file is None):
        raise s.error("cert_file", "cert_file and key_file go together")
    return MqttSettings(
        url=url,
        host=parts.hostname,
        port=port,
        tls=tls,
        topic_prefix=prefix,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        client_id=s.string("client_id"),
        keepalive_seconds=s.integer("keepalive_seconds", 60, low=5, high=3600),
        reconnect_max_seconds=s.number("reconnect_max_seconds", 30.0, low=0.1, high=3600),
    )


def _key_file(s: _Section, key: str, module: Path | None) -> Path | TokenKeyRef | None:
    """A TLS client key: a PEM file, or a `pkcs11:` URI whose module is [core] pkcs11_module."""
    raw = s.string(key)
    if raw is None or not is_pkcs11_uri(raw):
        return s.path_value(key)
    try:
        return parse_token_key_uri(raw, base_dir=s.path.parent, module=module, public_key=None)
    except ValueError as exc:
        raise s.error(key, str(exc)) from None


def _aws(s: _Section) -> AwsSettings:
    region = s.string("region", required=True)
    assert region is not None  # noqa: S101 - required=True guarantees it
    endpoint_url = s.string("endpoint_url")
    if endpoint_url is not None and urlsplit(endpoint_url).scheme not in {"http", "https"}:
        raise s.error("endpoint_url", f"must be an http:// or https:// URL, not {endpoint_url!r}")
    return AwsSettings(region=region, endpoint_url=endpoint_url)


_IOT_CREDENTIAL_KEYS = (
    "iot_credentials_endpoint",
    "role_alias",
    "iot_cert_file",
    "iot_key_file",
    "iot_ca_file",
)


def token_keys(
    core: CoreSettings, mqtt: MqttSettings, aws: AwsSettings
) -> tuple[Path | TokenKeyRef | None, ...]:
    """Every key setting that may name a key in a token: the core's, MQTT's, IoT's."""
    return (core.private_key, mqtt.key_file, aws.iot.key_file if aws.iot else None)


def _core_aws(
    s: _Section, *, thing_name: str, mqtt: MqttSettings, module: Path | None
) -> AwsSettings:
    """The core's `[aws]`: the shared keys, and where its credentials come from."""
    aws = _aws(s)
    if s.choice("credentials", "chain", ("chain", "iot")) == "iot":
        return replace(aws, iot=_iot_credentials(s, thing_name, mqtt, module))
    for key in _IOT_CREDENTIAL_KEYS:
        if key in s.table:
            raise s.error(key, 'only applies with credentials = "iot"')
    return aws


def _iot_credentials(
    s: _Section, thing_name: str, mqtt: MqttSettings, module: Path | None
) -> IotCredentialSettings:
    """`credentials = "iot"`: endpoint, role alias, and certificate (by default [mqtt]'s)."""
    endpoint = s.string("iot_credentials_endpoint", required=True)
    role_alias = s.string("role_alias", required=True)
    assert endpoint is not None  # noqa: S101 - required=True guarantees it
    assert role_alias is not None  # noqa: S101
    if "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname or parts.path.strip("/"):
        raise s.error(
            "iot_credentials_endpoint",
            f"must be a host name or https://host[:port], not {endpoint!r} (`aws iot "
            "describe-endpoint --endpoint-type iot:CredentialProvider` prints it)",
        )
    if any(c in role_alias for c in "/?#") or len(role_alias) > 128:  # noqa: PLR2004 - AWS's limit
        raise s.error("role_alias", "must be at most 128 characters without '/', '?' or '#'")
    cert_file = s.path_value("iot_cert_file", mqtt.cert_file)
    key_file = _key_file(s, "iot_key_file", module) or mqtt.key_file
    if cert_file is None or key_file is None:
        raise s.error(
            "iot_cert_file",
            "is needed (with iot_key_file) when [mqtt] has no cert_file and key_file to use",
        )
    return IotCredentialSettings(
        endpoint=endpoint.rstrip("/"),
        role_alias=role_alias,
        thing_name=thing_name,
        cert_file=cert_file,
        key_file=key_file,
        ca_file=s.path_value("iot_ca_file", mqtt.ca_file),
    )


def _fetch(s: _Section) -> FetchSettings:
    return FetchSettings(
        concurrency=s.integer("concurrency", 16, low=1, high=256),
        deadline_seconds=s.number("deadline_seconds", 120.0, low=0.1, high=86400),
        max_attempts=s.integer("max_attempts", 5, low=1, high=20),
        use_batch=s.boolean("use_batch", default=True),
    )


def _log(s: _Section) -> LogSettings:
    level = s.choice("level", "info", ("debug", "info", "warning", "error"))
    fmt = s.choice("format", "auto", ("auto", "console", "json"))
    return LogSettings(level=level, format=fmt)  # type: ignore[arg-type]


def _deployments(s: _Section) -> DeploymentSettings:
    return DeploymentSettings(
        trusted_keys=_path_list(s, "trusted_keys", ()),
        allow_unsigned=s.boolean("allow_unsigned", default=False),
    )


# The control plane's config (`edge cloud`, edge/cloud/config.py) has the same [mqtt] and [aws]
# tables with the same meaning; these names let it parse them with the very same code.
Section = _Section
parse_mqtt_section = _mqtt
parse_aws_section = _aws


def _path_list(s: _Section, key: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
    """A list of paths; relative ones are taken from the config file's directory."""
    items = s._get(key, list, "a list of paths")  # noqa: SLF001 - same module
    if items is None:
        return default
    paths: list[Path] = []
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise s.error(key, f"entry {index} must be a non-empty path string")
        p = Path(item).expanduser()
        paths.append(p if p.is_absolute() else (s.path.parent / p).resolve())
    return tuple(paths)


def _workers(s: _Section) -> WorkerSettings:
    python = s.path_value("python", Path(sys.executable))
    assert python is not None  # noqa: S101 - has a default
    sandbox = s.choice("sandbox", "auto", ("auto", "required", "off"))
    return WorkerSettings(
        python=python,
        sandbox=sandbox,  # type: ignore[arg-type]
        writable_paths=_path_list(s, "writable_paths", DEFAULT_WRITABLE_PATHS),
        hidden_paths=_path_list(s, "hidden_paths", ()),
        default_user=_default_user(s),
        local_code_dirs=_path_list(s, "local_code_dirs", ()),
    )


def _default_user(s: _Section) -> WorkerUser | None:
    """`default_user`: a user name or uid that this machine knows, never root."""
    import pwd  # noqa: PLC0415 - only when the key is set

    s.used.add("default_user")
    value = s.table.get("default_user")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip():
        raise s.error("default_user", "must be a user name or a uid")
    try:
        if isinstance(value, int) or value.isdigit():
            entry = pwd.getpwuid(int(value))
        else:
            entry = pwd.getpwnam(value)
    except (KeyError, OverflowError):
        raise s.error(
            "default_user",
            f"names no user of this machine ({value!r}): create it "
            "(useradd --system --no-create-home --shell /usr/sbin/nologin NAME) or remove the key",
        ) from None
    if entry.pw_uid == 0:
        raise s.error("default_user", "must be an unprivileged user, not root")
    return WorkerUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _audit(s: _Section) -> AuditSettings:
    return AuditSettings(
        enabled=s.boolean("enabled", default=True),
        flush_seconds=s.number("flush_seconds", 1.0, low=0.05, high=3600),
        max_bytes=s.integer("max_bytes", 10 * 1024 * 1024, low=4096, high=2**40),
        backups=s.integer("backups", 5, low=0, high=100),
    )


def _metrics(s: _Section) -> MetricsSettings:
    listen = s.string("listen", "")
    address = None
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004
            raise s.error("listen", f"{listen!r} is not host:port, e.g. 127.0.0.1:9464")
        address = (host.strip("[]"), int(port))
    return MetricsSettings(
        listen=address,
        stale_after_seconds=s.number("stale_after_seconds", 86400.0, low=1, high=10 * 365 * 86400),
    )


def _refresh(s: _Section) -> RefreshSettings:
    interval = s.number("interval_seconds", 0.0, low=0, high=30 * 86400)
    if 0 < interval < 1:
        raise s.error("interval_seconds", f"must be 0 (off) or at least 1, not {interval:g}")
    return RefreshSettings(
        interval_seconds=interval,
        # Secrets Manager's DescribeSecret quota is 50 requests a second per account and region.
        max_calls_per_second=s.number("max_calls_per_second", 10.0, low=0.1, high=50),
        hint_min_interval_seconds=s.number("hint_min_interval_seconds", 30.0, low=0, high=86400),
    )
