# SPDX-License-Identifier: Apache-2.0
"""The control plane's TOML configuration (`cloud.toml`): [cloud], [mqtt] and [aws].

[mqtt] and [aws] mean what they mean in the core's config and are parsed by the same code
(`edge.config`), so a key that works in one works in the other. Relative paths are resolved
against the config file's directory; unknown sections and keys are errors that name them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True, slots=True)
class CloudSettings:
    """`[cloud]`: where the control plane keeps its state and how it names and signs things."""

    database: Path
    signing_key: Path
    artifact_bucket: str | None = None
    account_id: str = DEFAULT_ACCOUNT_ID

    @property
    def public_key(self) -> Path:
        """The signing key's public half, `<signing_key>.pub`, which cores trust."""
        return self.signing_key.with_name(self.signing_key.name + ".pub")


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """The whole validated control-plane configuration."""

    path: Path
    cloud: CloudSettings
    mqtt: MqttSettings
    aws: AwsSettings


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
    )
    for section in sections.values():
        section.finish()
    return config


def _cloud(s: Section) -> CloudSettings:
    database = s.path_value("database", s.path.parent / "edge-cloud.db")
    signing_key = s.path_value("signing_key", s.path.parent / "signing-key.pem")
    assert database is not None  # noqa: S101 - has a default
    assert signing_key is not None  # noqa: S101 - has a default
    bucket = s.string("artifact_bucket")
    if bucket is not None and not _valid_bucket(bucket):
        raise s.error(
            "artifact_bucket",
            f"{bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')",
        )
    account_id = s.string("account_id", DEFAULT_ACCOUNT_ID)
    assert account_id is not None  # noqa: S101 - has a default
    if not is_account_id(account_id):
        raise s.error("account_id", f"must be 12 digits, not {account_id!r}")
    return CloudSettings(
        database=database, signing_key=signing_key, artifact_bucket=bucket, account_id=account_id
    )


def _valid_bucket(name: str) -> bool:
    """S3's bucket naming rules, the parts that matter for a typo."""
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return (
        3 <= len(name) <= 63  # noqa: PLR2004 - S3's limits
        and set(name) <= allowed
        and name[0].isalnum()
        and name[-1].isalnum()
    )
