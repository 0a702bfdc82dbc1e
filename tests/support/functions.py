"""Function packages for tests: V1 handlers zipped with the unmodified greengrasssdk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.fixtures.core import edge_cli
from edge.fixtures.reference import write_v1_package
from edge.fixtures.services import TEST_REGION

if TYPE_CHECKING:
    from tests.support.env import Env

ACCOUNT = "123456789012"

FUNCTIONS_DIR = Path(__file__).resolve().parents[1] / "integration" / "functions"


def build_package(path: Path, modules: tuple[str, ...] = ("app.py",)) -> tuple[Path, str]:
    """Zip handler modules (app.py by default) with the unmodified greengrasssdk from PyPI.

    Returns (zip, sha256). `modules` are file names in tests/integration/functions/.
    """
    data = write_v1_package(path, {m: (FUNCTIONS_DIR / m).read_bytes() for m in modules})
    return path, hashlib.sha256(data).hexdigest()


def code_of(path: Path, modules: tuple[str, ...] = ("app.py",)) -> dict[str, str]:
    """`build_package`, as a V1 function's `Code` object (file:// zip and its Sha256)."""
    zipped, digest = build_package(path, modules)
    return {"Uri": zipped.as_uri(), "Sha256": digest}


def function_arn(name: str, version: str = "1") -> str:
    """A qualified Lambda ARN."""
    return f"arn:aws:lambda:{TEST_REGION}:{ACCOUNT}:function:{name}:{version}"


def function(
    name: str,
    handler: str,
    code: dict[str, Any],
    *,
    policies: list[str] | None = None,
    pinned: bool = False,
    timeout: int = 10,
    memory_kb: int = 16384,
    variables: dict[str, str] | None = None,
    run_as: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A V1 function object with its code location."""
    execution = {"Execution": {"RunAs": run_as}} if run_as else {}
    return {
        "Id": name,
        "FunctionArn": function_arn(name),
        "FunctionConfiguration": {
            "Pinned": pinned,
            "MemorySize": memory_kb,
            "Timeout": timeout,
            "Handler": handler,
            "Code": code,
            "Environment": {
                "Variables": variables or {},
                "ResourceAccessPolicies": [
                    {"ResourceId": r, "Permission": "ro"} for r in policies or []
                ],
                **execution,
            },
        },
    }


def invoke(env: Env, name: str, payload: Any, *, expect_error: bool = False) -> Any:
    """`edge invoke` a function by name; return its decoded JSON result (or stderr on error)."""
    result = edge_cli(
        "invoke",
        "--config",
        str(env.config),
        "--function-arn",
        function_arn(name),
        "--payload",
        json.dumps(payload),
    )
    # stdout is the function's own answer (it may hold a value it was granted); stderr is ours.
    env.cli_output.append(result.stderr)
    if expect_error:
        assert result.returncode == 1, result
        return result.stderr
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def read_secret(env: Env, name: str, secret_id: str) -> dict[str, Any]:
    """Have function `name` (app.function_handler) read a secret through the core; no error."""
    answer: dict[str, Any] = invoke(env, name, {"SecretId": secret_id})
    assert "error" not in answer, answer
    return answer
