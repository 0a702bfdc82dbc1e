# SPDX-License-Identifier: Apache-2.0
"""Reading a TOML config file: who may change it, and each table read key by key with its type.

Shared by the core's config (`edge.config`) and the control plane's (`edge.cloud.config`):
unknown keys and wrong types are errors that name the key, and the message points at the
example file that documents every key.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from edge.errors import ConfigError, ConfigPermissionsError

#: Mode bits that let users other than the owner change the config file. Whoever can change
#: it chooses the core's key, broker, trusted signers and code sources, so they are refused.
_OTHERS_WRITE_BITS = 0o022
#: Any access by group or others: refused when the file holds a secret (a PKCS#11 pin-value).
_OTHERS_ANY_BITS = 0o077
_T = TypeVar("_T")


class Section:
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

    def typed(self, key: str, kind: type[_T], what: str) -> _T | None:
        """The key's value if it is of `kind` (`what` names it in the error), None if absent."""
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
        """The key as messages name it: `section.key`."""
        return f"{self.name}.{key}"

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError naming the file and this key."""
        return ConfigError(str(self.path), problem, key=self.key(key))

    @overload
    def string(self, key: str, default: str, *, required: bool = False) -> str: ...
    @overload
    def string(self, key: str, default: None = None, *, required: Literal[True]) -> str: ...
    @overload
    def string(self, key: str, default: None = None, *, required: bool = False) -> str | None: ...
    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        """A non-empty string, `default` when absent (an error when `required`)."""
        value = self.typed(key, str, "a string")
        if value is None:
            if required:
                raise self.error(key, "is required")
            return default
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        """An integer from `low` to `high`, `default` when absent."""
        value = self.typed(key, int, "an integer")
        if value is None:
            return default
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, not {value}")
        return value

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        """A number (integer or float) from `low` to `high`, `default` when absent."""
        self.used.add(key)
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {type(value).__name__}")
        if not low <= value <= high:
            raise self.error(key, f"must be between {low:g} and {high:g}, not {value}")
        return float(value)

    def boolean(self, key: str, *, default: bool) -> bool:
        """True or false, `default` when absent."""
        value = self.typed(key, bool, "true or false")
        return default if value is None else value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        """One of `choices`, `default` when absent."""
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    @overload
    def path_value(self, key: str, default: Path) -> Path: ...
    @overload
    def path_value(self, key: str, default: None = None) -> Path | None: ...
    def path_value(self, key: str, default: Path | None = None) -> Path | None:
        """A path; a relative one is taken from the config file's directory."""
        value = self.string(key)
        if value is None:
            return default
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def finish(self) -> None:
        """Refuse the table if it holds a key no reader asked for (a typo, say)."""
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], f"is not a known key (see {self.example})")


def read_toml(path: Path | str, *, example: str) -> tuple[dict[str, Any], Path]:
    """Read a TOML config file; return its tables and its resolved path.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML (the message names `example`).
    """
    raw, resolved, _ = read_toml_file(path, example=example)
    return raw, resolved


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the opened config file was: its mode and owner, and whether anyone may change it."""

    info: os.stat_result
    read_only_mount: bool


def read_toml_file(path: Path | str, *, example: str) -> tuple[dict[str, Any], Path, FileFacts]:
    """As `read_toml`, with what the file was when opened (for `check_config_file`)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            # Checked on the descriptor that is read, so a swapped file can't pass for another.
            facts = FileFacts(
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


def check_config_file(path: Path, facts: FileFacts, *, holds_secret: bool) -> None:
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
) -> dict[str, Section]:
    """One reader per known table (absent ones empty); an unknown table is an error."""
    for name in raw:
        if name not in names:
            raise ConfigError(str(path), f"is not a known section (see {example})", key=f"[{name}]")
    return {name: Section(path, name, raw.get(name, {}), example=example) for name in names}
