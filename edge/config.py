# SPDX-License-Identifier: Apache-2.0
"""The core's TOML configuration: parsed into the frozen settings of `edge.settings`, validated.

Every key is documented in `config.example.toml`. Unknown keys and wrong types are errors that
name the key, because a typo in a field device's config must not silently fall back to a default.
Relative paths are resolved against the directory of the config file, so a config and its state
can be moved together.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.configfile import (
    Section,
    check_config_file,
    open_sections,
    read_toml,
    read_toml_file,
)
from edge.eventloop import EVENT_LOOPS, uvloop_installed
from edge.secrets.keyref import TokenKeyRef, is_pkcs11_uri, parse_token_key_uri
from edge.settings import (
    DEFAULT_MQTT_PORT,
    DEFAULT_MQTTS_PORT,
    DEFAULT_WRITABLE_PATHS,
    MAX_THING_NAME_LENGTH,
    AuditSettings,
    AwsSettings,
    Config,
    CoreSettings,
    DeploymentSettings,
    FetchSettings,
    IotCredentialSettings,
    LogSettings,
    MetricsSettings,
    MqttSettings,
    RefreshSettings,
    WorkerSettings,
    WorkerUser,
)

# The import point for the config: the settings types, the reader of other TOML files.
__all__ = [
    "DEFAULT_MQTTS_PORT",
    "DEFAULT_MQTT_PORT",
    "DEFAULT_WRITABLE_PATHS",
    "MAX_THING_NAME_LENGTH",
    "AuditSettings",
    "AwsSettings",
    "Config",
    "CoreSettings",
    "DeploymentSettings",
    "FetchSettings",
    "IotCredentialSettings",
    "LogSettings",
    "MetricsSettings",
    "MqttSettings",
    "RefreshSettings",
    "Section",
    "WorkerSettings",
    "WorkerUser",
    "check_config_file",
    "load_config",
    "open_sections",
    "parse_aws_section",
    "parse_config",
    "parse_mqtt_section",
    "read_toml",
]

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


def load_config(path: Path | str) -> Config:
    """Read and validate a config file, and check who else may change or read it.

    Raises:
        ConfigPermissionsError: Another user can change the file (its owner, group or other
            write bits), or read it while it holds a PIN.
        ConfigError: the file is missing, not TOML, or a key is unknown, missing or wrong.
    """
    raw, resolved, facts = read_toml_file(path, example=_EXAMPLE)
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


def _core(s: Section) -> CoreSettings:
    thing_name = s.string("thing_name", required=True)
    # Thing names become MQTT topic levels: wildcards or separators would cross-talk.
    if any(ch in thing_name for ch in "/+#") or len(thing_name) > MAX_THING_NAME_LENGTH:
        raise s.error("thing_name", "must be at most 128 characters without '/', '+' or '#'")
    state_dir = s.path_value("state_dir", s.path.parent / "state")
    private_key = _private_key(s, state_dir)
    code_dir = s.path_value("code_dir", s.path.parent / "functions")
    event_loop = s.choice("event_loop", "auto", EVENT_LOOPS)
    if event_loop == "uvloop" and not uvloop_installed():
        raise s.error(
            "event_loop",
            "uvloop is not installed (`pip install 'edge[fast]'` builds it where it has no "
            'wheel); use "auto" or "asyncio"',
        )
    return CoreSettings(
        thing_name=thing_name,
        state_dir=state_dir,
        private_key=private_key,
        code_dir=code_dir,
        event_loop=event_loop,
    )


def _private_key(s: Section, state_dir: Path) -> Path | TokenKeyRef:
    """`private_key`: a key file, or a PKCS#11 URI with `pkcs11_module` and `public_key`."""
    raw = s.string("private_key")
    module = s.path_value("pkcs11_module")
    public_key = s.path_value("public_key")
    if raw is None or not is_pkcs11_uri(raw):
        if "public_key" in s.table:
            raise s.error("public_key", 'only applies to a private_key = "pkcs11:..." URI')
        return s.path_value("private_key", state_dir / "core.key")
    try:
        return parse_token_key_uri(
            raw, base_dir=s.path.parent, module=module, public_key=public_key
        )
    except ValueError as exc:
        # The message quotes the URI with any pin-value masked, never the PIN.
        raise s.error("private_key", str(exc)) from None


def _mqtt(s: Section, *, module: Path | None = None) -> MqttSettings:
    url = s.string("url", f"mqtt://127.0.0.1:{DEFAULT_MQTT_PORT}")
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
        raise s.error("url", f"must look like mqtt://host:port or mqtts://host:port, not {url!r}")
    try:
        port = parts.port or (DEFAULT_MQTTS_PORT if parts.scheme == "mqtts" else DEFAULT_MQTT_PORT)
    except ValueError:
        raise s.error("url", f"has an invalid port: {url!r}") from None
    prefix = s.string("topic_prefix", "edge")
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


def _key_file(s: Section, key: str, module: Path | None) -> Path | TokenKeyRef | None:
    """A TLS client key: a PEM file, or a `pkcs11:` URI whose module is [core] pkcs11_module."""
    raw = s.string(key)
    if raw is None or not is_pkcs11_uri(raw):
        return s.path_value(key)
    try:
        return parse_token_key_uri(raw, base_dir=s.path.parent, module=module, public_key=None)
    except ValueError as exc:
        raise s.error(key, str(exc)) from None


def _aws(s: Section) -> AwsSettings:
    region = s.string("region", required=True)
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
    s: Section, *, thing_name: str, mqtt: MqttSettings, module: Path | None
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
    s: Section, thing_name: str, mqtt: MqttSettings, module: Path | None
) -> IotCredentialSettings:
    """`credentials = "iot"`: endpoint, role alias, and certificate (by default [mqtt]'s)."""
    endpoint = s.string("iot_credentials_endpoint", required=True)
    role_alias = s.string("role_alias", required=True)
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


def _fetch(s: Section) -> FetchSettings:
    return FetchSettings(
        concurrency=s.integer("concurrency", 16, low=1, high=256),
        deadline_seconds=s.number("deadline_seconds", 120.0, low=0.1, high=86400),
        max_attempts=s.integer("max_attempts", 5, low=1, high=20),
        use_batch=s.boolean("use_batch", default=True),
    )


def _log(s: Section) -> LogSettings:
    level = s.choice("level", "info", ("debug", "info", "warning", "error"))
    fmt = s.choice("format", "auto", ("auto", "console", "json"))
    return LogSettings(level=level, format=fmt)  # type: ignore[arg-type]


def _deployments(s: Section) -> DeploymentSettings:
    return DeploymentSettings(
        trusted_keys=_path_list(s, "trusted_keys", ()),
        allow_unsigned=s.boolean("allow_unsigned", default=False),
    )


# The control plane's config (`edge cloud`, edge/cloud/config.py) has the same [mqtt] and [aws]
# tables with the same meaning; these names let it parse them with the very same code.
parse_mqtt_section = _mqtt
parse_aws_section = _aws


def _path_list(s: Section, key: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
    """A list of paths; relative ones are taken from the config file's directory."""
    items = s.typed(key, list, "a list of paths")
    if items is None:
        return default
    paths: list[Path] = []
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise s.error(key, f"entry {index} must be a non-empty path string")
        p = Path(item).expanduser()
        paths.append(p if p.is_absolute() else (s.path.parent / p).resolve())
    return tuple(paths)


def _workers(s: Section) -> WorkerSettings:
    python = s.path_value("python", Path(sys.executable))
    sandbox = s.choice("sandbox", "auto", ("auto", "required", "off"))
    return WorkerSettings(
        python=python,
        sandbox=sandbox,  # type: ignore[arg-type]
        writable_paths=_path_list(s, "writable_paths", DEFAULT_WRITABLE_PATHS),
        hidden_paths=_path_list(s, "hidden_paths", ()),
        default_user=_default_user(s),
        local_code_dirs=_path_list(s, "local_code_dirs", ()),
    )


def _default_user(s: Section) -> WorkerUser | None:
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


def _audit(s: Section) -> AuditSettings:
    return AuditSettings(
        enabled=s.boolean("enabled", default=True),
        flush_seconds=s.number("flush_seconds", 1.0, low=0.05, high=3600),
        max_bytes=s.integer("max_bytes", 10 * 1024 * 1024, low=4096, high=2**40),
        backups=s.integer("backups", 5, low=0, high=100),
    )


def _metrics(s: Section) -> MetricsSettings:
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


def _refresh(s: Section) -> RefreshSettings:
    interval = s.number("interval_seconds", 0.0, low=0, high=30 * 86400)
    if 0 < interval < 1:
        raise s.error("interval_seconds", f"must be 0 (off) or at least 1, not {interval:g}")
    return RefreshSettings(
        interval_seconds=interval,
        # Secrets Manager's DescribeSecret quota is 50 requests a second per account and region.
        max_calls_per_second=s.number("max_calls_per_second", 10.0, low=0.1, high=50),
        hint_min_interval_seconds=s.number("hint_min_interval_seconds", 30.0, low=0, high=86400),
    )
