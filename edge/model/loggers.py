# SPDX-License-Identifier: Apache-2.0
"""A group's loggers and devices: what the core does with them, and what it ignores.

Greengrass V1 groups may carry a logger definition (where the core and the functions log, at
what level) and a device definition (AWS IoT things that talk to the core locally). edge acts
on one logger: a `FileSystem` logger of component `GreengrassSystem`, whose `Level` becomes the
core's log level and whose `Space` bounds a copy of the core's log in its state directory (as
V1 kept its system log under /greengrass/ggc/var/log). Everything else (`AWSCloudWatch`
loggers, `Lambda` loggers, which edge's functions don't need since their output is in the
core's log, and devices) doesn't stop a deployment: it is named in one note, which the control
plane records with the deployment and the core logs as a warning. Both sides compute it here,
from the same document, so they say the same thing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edge.model.fields import (
    Where,
    as_object,
    check_identifier,
    entry_label,
    get_string,
    quoted,
)

#: V1's logger levels, and the core's log level each one sets ([log] level's values).
LEVELS: Final = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARN": "warning",
    "ERROR": "error",
    "FATAL": "error",
}
COMPONENTS: Final = ("GreengrassSystem", "Lambda")
TYPES: Final = ("FileSystem", "AWSCloudWatch")
#: A FileSystem logger's `Space` (KB) when it names none: ten megabytes, as the audit log's.
DEFAULT_SPACE_KB: Final = 10 * 1024
_LOGGER_KEYS: Final = frozenset({"Id", "Component", "Level", "Type", "Space"})
_DEVICE_KEYS: Final = frozenset({"Id", "ThingArn", "CertificateArn", "SyncShadow"})


@dataclass(frozen=True, slots=True)
class LoggingPlan:
    """What the core does with a group's loggers and devices."""

    #: The core's log level from a FileSystem logger of GreengrassSystem (None: keep [log] level).
    level: str | None
    #: What it doesn't act on, one phrase each.
    ignored: tuple[str, ...]
    #: That logger's `Space` in KB: the most the core's log file may take (None: no file).
    space_kb: int | None = None

    @property
    def note(self) -> str | None:
        """The one line saying what was ignored, or None."""
        if not self.ignored:
            return None
        return "edge ignored " + "; ".join(self.ignored)


def _entries(
    items: object, section: str, keys: frozenset[str], noun: str
) -> Iterator[tuple[Where, dict[str, Any]]]:
    """Each entry of a list of objects with known keys and unique `Id`s, with where it is."""
    if not isinstance(items, list):
        raise Where(section).error("must be an array")
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = Where(entry_label(section, index, item))
        entry = as_object(item, where)
        for key in entry:
            if key not in keys:
                raise where.error(f"{quoted(key)} is not a key of a {noun}")
        ident = check_identifier(entry.get("Id"), where.at("Id"))
        if ident in seen:
            raise where.error(f"Id {quoted(ident)} appears twice; {noun} ids must be unique")
        seen.add(ident)
        yield where, entry


def check_loggers(items: object) -> list[dict[str, Any]]:
    """Check a logger definition version's Loggers, as V1 defines them; return them.

    Raises:
        DeploymentInvalidError: An entry is malformed; the message names it.
    """
    loggers = []
    for where, logger in _entries(items, "Loggers", _LOGGER_KEYS, "logger"):
        for key, allowed in (("Component", COMPONENTS), ("Level", tuple(LEVELS)), ("Type", TYPES)):
            value = get_string(logger, key, where)
            if value not in allowed:
                raise where.at(key).error(f"{quoted(value)} is not one of {', '.join(allowed)}")
        space = logger.get("Space")
        if space is not None and (not isinstance(space, int) or isinstance(space, bool)):
            raise where.at("Space").error("must be an integer (KB)")
        loggers.append(logger)
    return loggers


def check_devices(items: object) -> list[dict[str, Any]]:
    """Check a device definition version's Devices (Id, ThingArn, CertificateArn); return them.

    Raises:
        DeploymentInvalidError: An entry is malformed; the message names it.
    """
    devices = []
    for where, device in _entries(items, "Devices", _DEVICE_KEYS, "device"):
        for key in ("ThingArn", "CertificateArn"):
            if not get_string(device, key, where).startswith("arn:"):
                raise where.at(key).error("must be an ARN")
        if "SyncShadow" in device and not isinstance(device["SyncShadow"], bool):
            raise where.at("SyncShadow").error("must be true or false")
        devices.append(device)
    return devices


def plan_logging(group: Mapping[str, Any]) -> LoggingPlan:
    """Decide what the core does with the "Loggers" and "Devices" of a deployment's group.

    Raises:
        DeploymentInvalidError: Loggers or Devices are malformed.
    """
    level: str | None = None
    space_kb: int | None = None
    ignored: list[str] = []
    for logger in check_loggers(group.get("Loggers", [])):
        name = f"{logger['Type']} logger {quoted(logger['Id'])} ({logger['Component']})"
        if logger["Type"] == "FileSystem" and logger["Component"] == "GreengrassSystem":
            level = LEVELS[logger["Level"]]
            space_kb = max(1, logger.get("Space") or DEFAULT_SPACE_KB)
        elif logger["Type"] == "AWSCloudWatch":
            ignored.append(f"{name}: edge doesn't send logs to CloudWatch")
        else:
            ignored.append(f"{name}: function output is in the core's log, at its level")
    devices = check_devices(group.get("Devices", []))
    if devices:
        ids = ", ".join(quoted(d["Id"]) for d in devices)
        ignored.append(f"{len(devices)} device(s) ({ids}): edge has no local device connections")
    return LoggingPlan(level=level, ignored=tuple(ignored), space_kb=space_kb)
