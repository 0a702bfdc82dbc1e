# SPDX-License-Identifier: Apache-2.0
"""The control plane's TOML configuration (`cloud.toml`): [cloud], [cloud.auth], [mqtt] and [aws].

[mqtt] and [aws] mean what they mean in the core's config and are parsed by the same code
(`edge.config`), so a key that works in one works in the other. Relative paths are resolved
against the config file's directory; unknown sections and keys are errors that name them.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge.cloud.ids import is_account_id
from edge.config import (
    AwsSettings,
    MqttSettings,
    Section,
    open_sections,
    parse_aws_section,
    parse_mqtt_section,
    read_toml,
)

#: The account id in ARNs when none is configured: the one AWS's documentation uses.
DEFAULT_ACCOUNT_ID = "123456789012"
#: Where unknown keys send the reader.
_EXAMPLE = "cloud.example.toml"
#: Where `edge cloud serve` listens when [cloud] listen is not set: loopback only, so a service
#: started by hand is not reachable from the network until someone decides it should be.
DEFAULT_LISTEN: Final = "127.0.0.1:8443"
#: AWS access key ids are 16-128 word characters (IAM's own rule); ours follow it so that every
#: SDK's credential handling accepts them.
_ACCESS_KEY_ID: Final = re.compile(r"\w{16,128}", re.ASCII)
#: How `[cloud] database` names a PostgreSQL database rather than a SQLite file.
_URL_SCHEMES: Final = ("postgresql://", "postgres://")
_LISTEN: Final = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})"
)


@dataclass(frozen=True, slots=True)
class AccessKey:
    """One `[cloud.auth] keys` entry: an access key id and the file holding its secret key."""

    access_key_id: str
    secret_access_key_file: Path


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """What `edge cloud serve` needs beyond the commands: where to listen, TLS, who may call."""

    host: str
    port: int
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    keys: tuple[AccessKey, ...] = ()
    #: Where Prometheus metrics are served (HOST, PORT); None: not served.
    metrics_listen: tuple[str, int] | None = None

    @property
    def tls(self) -> bool:
        """Whether the API is served over HTTPS."""
        return self.tls_cert_file is not None


#: `[cloud] bulk_lease_seconds` by default: long enough for a slow batch of deployments and a
#: database failover, short enough that a dead replica's bulk deployment resumes soon.
BULK_LEASE_SECONDS: Final = 30.0
#: `[cloud] status_reread_seconds` by default.
STATUS_REREAD_SECONDS: Final = 15.0
#: `[cloud] status_reread_after_seconds` by default: a younger deployment is left to the live
#: stream of reports.
STATUS_REREAD_AFTER_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class CloudSettings:
    """`[cloud]`: where the control plane keeps its state and how it names and signs things."""

    #: A SQLite file, or a `postgresql://user@host:port/dbname` URL (no password in it).
    database: Path | str
    signing_key: Path
    artifact_bucket: str | None = None
    account_id: str = DEFAULT_ACCOUNT_ID
    serve: ServeSettings = ServeSettings(host="127.0.0.1", port=8443)
    #: The file holding the PostgreSQL password (mode 0600), read when the database is opened.
    database_password_file: Path | None = None
    #: How long a replica that claimed an outbox row may take to publish it before another
    #: replica takes it over, in seconds.
    outbox_lease_seconds: float = 30.0
    #: How often a replica looks for outbox rows other replicas left, in seconds.
    outbox_poll_seconds: float = 1.0
    #: How long whoever runs a bulk deployment may go without renewing its lease before another
    #: replica takes the bulk deployment over, in seconds.
    bulk_lease_seconds: float = BULK_LEASE_SECONDS
    #: With a shared subscription: how often a replica has the retained reports of unfinished
    #: deployments sent again, in seconds.
    status_reread_seconds: float = STATUS_REREAD_SECONDS
    #: How old an unfinished deployment must be before its report is read again, in seconds.
    status_reread_after_seconds: float = STATUS_REREAD_AFTER_SECONDS

    @property
    def public_key(self) -> Path:
        """The signing key's public half, `<signing_key>.pub`, which cores trust."""
        return self.signing_key.with_name(self.signing_key.name + ".pub")


@dataclass(frozen=True, slots=True)
class Pacing:
    """`[mqtt] publish_rate`, `publish_burst`, `publish_queue_limit`: `edge cloud serve`'s pace.

    The core reads [mqtt] too and has no such keys: they are read here only.
    """

    #: Publishes per second, sustained. AWS IoT Core allows 100 per connection.
    rate: float = 100.0
    #: Publishes that may leave at once after a quiet spell.
    burst: int = 20
    #: Messages waiting at most; beyond that a publish is refused at once.
    queue_limit: int = 10_000
    #: Publishes awaiting their acknowledgement at once (paho's own window is 20).
    in_flight: int = 20
    #: `[mqtt] shared_subscription_group`: replicas follow statuses through
    #: `$share/<group>/...` (MQTT v5); None: one plain subscription.
    shared_group: str | None = None


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """The whole validated control-plane configuration."""

    path: Path
    cloud: CloudSettings
    mqtt: MqttSettings
    aws: AwsSettings
    pacing: Pacing = Pacing()


_SECTIONS = ("cloud", "mqtt", "aws")


def load_cloud_config(path: Path | str) -> CloudConfig:
    """Read and validate a control-plane config file.

    Raises:
        ConfigError: The file is missing, not TOML, or a key is unknown, missing or wrong.
    """
    raw, resolved = read_toml(path, example=_EXAMPLE)
    return parse_cloud_config(raw, path=resolved)


def parse_cloud_config(raw: dict[str, Any], *, path: Path) -> CloudConfig:
    """Validate an already-parsed control-plane TOML document (see `load_cloud_config`)."""
    sections = open_sections(raw, path=path, names=_SECTIONS, example=_EXAMPLE)
    config = CloudConfig(
        path=path,
        cloud=_cloud(sections["cloud"]),
        mqtt=parse_mqtt_section(sections["mqtt"]),
        aws=parse_aws_section(sections["aws"]),
        pacing=_pacing(sections["mqtt"]),
    )
    for section in sections.values():
        section.finish()
    return config


def _pacing(s: Section) -> Pacing:
    default = Pacing()
    return Pacing(
        rate=s.number("publish_rate", default.rate, low=0.1, high=1_000_000.0),
        burst=s.integer("publish_burst", default.burst, low=1, high=1_000_000),
        queue_limit=s.integer("publish_queue_limit", default.queue_limit, low=1, high=10_000_000),
        shared_group=_shared_group(s),
    )


def _shared_group(s: Section) -> str | None:
    group = s.string("shared_subscription_group")
    if group is not None and (not group or set(group) & set("/+#$")):
        raise s.error("shared_subscription_group", "must be a name without '/', '+', '#' or '$'")
    return group


def _cloud(s: Section) -> CloudSettings:
    database = _database(s)
    signing_key = s.path_value("signing_key", s.path.parent / "signing-key.pem")
    bucket = s.string("artifact_bucket")
    if bucket is not None and not _valid_bucket(bucket):
        raise s.error(
            "artifact_bucket",
            f"{bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')",
        )
    account_id = s.string("account_id", DEFAULT_ACCOUNT_ID)
    if not is_account_id(account_id):
        raise s.error("account_id", f"must be 12 digits, not {account_id!r}")
    return CloudSettings(
        database=database,
        signing_key=signing_key,
        artifact_bucket=bucket,
        account_id=account_id,
        serve=_serve(s),
        database_password_file=_password_file(s, database),
        outbox_lease_seconds=s.number("outbox_lease_seconds", 30.0, low=1.0, high=3600.0),
        outbox_poll_seconds=s.number("outbox_poll_seconds", 1.0, low=0.05, high=600.0),
        bulk_lease_seconds=s.number("bulk_lease_seconds", BULK_LEASE_SECONDS, low=1.0, high=3600.0),
        status_reread_seconds=s.number(
            "status_reread_seconds", STATUS_REREAD_SECONDS, low=0.1, high=3600.0
        ),
        status_reread_after_seconds=s.number(
            "status_reread_after_seconds", STATUS_REREAD_AFTER_SECONDS, low=0.0, high=300.0
        ),
    )


def _database(s: Section) -> Path | str:
    """`database`: a SQLite path (relative to the config file) or a PostgreSQL URL."""
    value = s.string("database")
    if value is None or not value.startswith(_URL_SCHEMES):
        return s.path_value("database", s.path.parent / "edge-cloud.db")
    parts = urllib.parse.urlsplit(value)
    if parts.password is not None:
        # The URL is shown in errors and logs; a password in it would be shown too.
        raise s.error("database", "must not carry a password; put it in database_password_file")
    if not parts.hostname and "host=" not in parts.query:
        raise s.error("database", "must name a host: postgresql://USER@HOST:PORT/DBNAME")
    if not parts.path.strip("/"):
        raise s.error("database", "must name a database: postgresql://USER@HOST:PORT/DBNAME")
    return value


def _password_file(s: Section, database: Path | str) -> Path | None:
    password_file = s.path_value("database_password_file")
    if password_file is not None and isinstance(database, Path):
        raise s.error("database_password_file", "goes with a postgresql:// database URL")
    return password_file


def _serve(s: Section) -> ServeSettings:
    listen = _address(s, "listen", s.string("listen", DEFAULT_LISTEN))
    metrics = s.string("metrics_listen")
    cert, key = s.path_value("tls_cert_file"), s.path_value("tls_key_file")
    if (cert is None) != (key is None):
        raise s.error("tls_cert_file", "tls_cert_file and tls_key_file go together")
    return ServeSettings(
        host=listen[0],
        port=listen[1],
        tls_cert_file=cert,
        tls_key_file=key,
        keys=_auth_keys(s),
        metrics_listen=None if metrics is None else _address(s, "metrics_listen", metrics),
    )


def _address(s: Section, key: str, value: str) -> tuple[str, int]:
    """A HOST:PORT (or [IPv6]:PORT) key's value as (host, port)."""
    match = _LISTEN.fullmatch(value)
    if match is None or not 0 < int(match["port"]) < 65536:  # noqa: PLR2004 - TCP's port range
        raise s.error(key, f"must be HOST:PORT (or [IPv6]:PORT), not {value!r}")
    return match["v6"] or match["host"], int(match["port"])


def _auth_keys(s: Section) -> tuple[AccessKey, ...]:
    """`[cloud.auth] keys`: a TOML sub-table of [cloud], read here so its keys are checked too."""
    s.used.add("auth")
    auth = s.table.get("auth", {})
    if not isinstance(auth, dict):
        raise s.error("auth", "must be a table ([cloud.auth])")
    unknown = sorted(set(auth) - {"keys"})
    if unknown:
        raise s.error(f"auth.{unknown[0]}", f"is not a known key (see {_EXAMPLE})")
    entries = auth.get("keys", [])
    if not isinstance(entries, list):
        raise s.error("auth.keys", "must be an array of {access_key_id, secret_access_key_file}")
    keys: list[AccessKey] = []
    for index, entry in enumerate(entries):
        name = f"auth.keys[{index}]"
        if not isinstance(entry, dict) or set(entry) != {
            "access_key_id",
            "secret_access_key_file",
        }:
            raise s.error(name, 'must be {access_key_id = "...", secret_access_key_file = "..."}')
        ident, file = entry["access_key_id"], entry["secret_access_key_file"]
        if not isinstance(ident, str) or _ACCESS_KEY_ID.fullmatch(ident) is None:
            raise s.error(f"{name}.access_key_id", "must be 16-128 of A-Z, a-z, 0-9 and _")
        if ident in {k.access_key_id for k in keys}:
            raise s.error(f"{name}.access_key_id", f"{ident!r} is listed twice")
        if not isinstance(file, str) or not file.strip():
            raise s.error(f"{name}.secret_access_key_file", "must be a path")
        path = Path(file).expanduser()
        keys.append(
            AccessKey(ident, path if path.is_absolute() else (s.path.parent / path).resolve())
        )
    return tuple(keys)


def _valid_bucket(name: str) -> bool:
    """S3's bucket naming rules, the parts that matter for a typo."""
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return (
        3 <= len(name) <= 63  # noqa: PLR2004 - S3's limits
        and set(name) <= allowed
        and name[0].isalnum()
        and name[-1].isalnum()
    )
