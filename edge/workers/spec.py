# SPDX-License-Identifier: Apache-2.0
"""What the core needs to run a group's function: read from its V1 `FunctionConfiguration`.

Pure: no I/O. The group model keeps each function's JSON as it came; this module reads the
fields that matter for running it (Handler, Code, Pinned, Timeout, MemorySize, Environment)
and rejects, naming the function, what can't be run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from edge.errors import DeploymentInvalidError
from edge.model import Function, Group

#: V1's defaults when a function omits them (seconds, KB).
DEFAULT_TIMEOUT_SECONDS = 3
DEFAULT_MEMORY_KB = 16384
#: V1 allowed 1..900 s timeouts and 2 MB..(device) memory; beyond a day is surely a typo.
MAX_TIMEOUT_SECONDS = 86400
MIN_MEMORY_KB = 2048
# Used with fullmatch: `$` would also match before a trailing newline ("mod.fn\n").
_HANDLER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CODE_SCHEMES = ("s3", "file")


@dataclass(frozen=True, slots=True)
class CodeRef:
    """Where a function's code is: `s3://bucket/key.zip`, `file:///x.zip` or `file:///dir`."""

    uri: str
    sha256: str | None = None

    @property
    def scheme(self) -> str:
        """`s3` or `file`."""
        return urlsplit(self.uri).scheme


@dataclass(frozen=True, slots=True)
class RunAs:
    """`Environment.Execution.RunAs`: the uid/gid a worker runs as (when the core is root)."""

    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """Everything the worker manager needs to run one function."""

    function_id: str
    function_arn: str
    handler: str
    code: CodeRef
    pinned: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    memory_kb: int = DEFAULT_MEMORY_KB
    variables: Mapping[str, str] = field(default_factory=dict)
    run_as: RunAs | None = None
    readable_resources: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The name in the ARN: `…:function:NAME[:qualifier]` or `…::/connectors/NAME/…`."""
        parts = self.function_arn.split(":")
        if len(parts) > 6:  # noqa: PLR2004 - ARN layout
            return parts[6]
        path = parts[-1].split("/")  # a connector: "/connectors/NAME/versions/N"
        return path[2] if len(path) > 2 and path[1] == "connectors" else self.function_arn  # noqa: PLR2004

    @property
    def unqualified_arn(self) -> str:
        """The ARN without its version or alias."""
        return ":".join(self.function_arn.split(":")[:7])


def function_specs(group: Group) -> tuple[FunctionSpec, ...]:
    """Specs of every function of a group, or DeploymentInvalidError naming the bad one."""
    return tuple(function_spec(fn, index) for index, fn in enumerate(group.functions))


def function_spec(fn: Function, index: int = 0) -> FunctionSpec:
    """Read one function's run configuration."""
    where = f'Functions[{index}] (Id "{fn.function_id}")'

    def bad(problem: str) -> DeploymentInvalidError:
        return DeploymentInvalidError(f"{where}: {problem}")

    config = fn.raw.get("FunctionConfiguration") or {}
    if not isinstance(config, Mapping):
        raise bad("FunctionConfiguration must be an object")
    handler = config.get("Handler")
    if not isinstance(handler, str) or not _HANDLER.fullmatch(handler):
        raise bad(
            "FunctionConfiguration.Handler must be 'module.function' (publish the function first)"
        )
    code = _code(config.get("Code", fn.raw.get("Code")), bad)
    timeout = _number(
        config.get("Timeout", DEFAULT_TIMEOUT_SECONDS), "Timeout", 1, MAX_TIMEOUT_SECONDS, bad
    )
    memory = _number(
        config.get("MemorySize", DEFAULT_MEMORY_KB), "MemorySize", MIN_MEMORY_KB, 2**31, bad
    )
    pinned = config.get("Pinned", False)
    if not isinstance(pinned, bool):
        raise bad("FunctionConfiguration.Pinned must be true or false")
    env = config.get("Environment") or {}
    variables = env.get("Variables") or {} if isinstance(env, Mapping) else {}
    return FunctionSpec(
        function_id=fn.function_id,
        function_arn=fn.function_arn,
        handler=handler,
        code=code,
        pinned=pinned,
        timeout_seconds=float(timeout),
        memory_kb=int(memory),
        variables=dict(variables),
        run_as=_run_as(env, bad),
        readable_resources=frozenset(p.resource_id for p in fn.access_policies),
    )


def _code(value: Any, bad: Any) -> CodeRef:  # noqa: ANN401 - untrusted JSON
    if not isinstance(value, Mapping) or not isinstance(value.get("Uri"), str):
        raise bad(
            'FunctionConfiguration.Code must be {"Uri": ..., "Sha256": ...} '
            "(publish the function first)"
        )
    uri = value["Uri"]
    parts = urlsplit(uri)
    if parts.scheme not in _CODE_SCHEMES:
        raise bad(f"Code.Uri must be s3://bucket/key or file:///absolute/path, not {uri[:80]!r}")
    if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
        raise bad("Code.Uri file:// paths must be absolute (file:///path)")
    if parts.scheme == "s3" and (not parts.netloc or not parts.path.strip("/")):
        raise bad("Code.Uri must name a bucket and a key: s3://bucket/key.zip")
    sha = value.get("Sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
        raise bad("Code.Sha256 must be 64 lowercase hex digits")
    if parts.scheme == "s3" and sha is None:
        raise bad("Code.Sha256 is required for s3:// code")
    return CodeRef(uri=uri, sha256=sha)


def _number(value: Any, name: str, low: float, high: float, bad: Any) -> float:  # noqa: ANN401
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad(f"FunctionConfiguration.{name} must be a number from {low:g} to {high:g}")
    return float(value)


def _run_as(env: Any, bad: Any) -> RunAs | None:  # noqa: ANN401 - untrusted JSON
    execution = env.get("Execution") if isinstance(env, Mapping) else None
    run_as = execution.get("RunAs") if isinstance(execution, Mapping) else None
    if run_as is None:
        return None
    if not isinstance(run_as, Mapping):
        raise bad("Environment.Execution.RunAs must be an object with Uid and Gid")
    uid, gid = run_as.get("Uid"), run_as.get("Gid")
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in (uid, gid)
    ):
        raise bad("Environment.Execution.RunAs needs integer Uid and Gid")
    return RunAs(uid=int(uid), gid=int(gid))  # type: ignore[arg-type]
