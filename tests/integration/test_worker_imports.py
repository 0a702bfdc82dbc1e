"""What a running worker holds: the V1 runtime loads no `typing`, no core side, nothing it needn't.

V1's smallest MemorySize is 16 MB for the interpreter, the runtime, the SDK and the user's
code, so every module the runtime loads on its own counts (edge/child/__init__.py says what it
avoids and how). Three functions on a real core, each confined as the core confines them, report
`sys.modules` after their first invocation: one that imports nothing, one that reads a secret
through the unmodified greengrasssdk, one through the typed client. A module that shouldn't be
there is named with the import that brought it in, from CPython's import record of the same
imports in a fresh interpreter started as a worker is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.fixtures.core import secret_resource
from edge.workers.process import _base_environment
from tests.support.env import Env
from tests.support.functions import build_package, function, invoke
from tests.support.imports import explain

pytestmark = pytest.mark.network

#: Never in a worker of ours, whatever its code: `typing` (about 0.6 MB), the core's side, and
#: what only the core needs (asyncio, TLS, HTTP, the standard library's heavier helpers).
NEVER = frozenset(
    {
        "typing",
        "asyncio",
        "dataclasses",
        "inspect",
        "pathlib",
        "ssl",
        "urllib.request",
        "http.client",
        "email",
        "structlog",
        "edge.config",
        "edge.log",
        "edge.redaction",
        "edge.ipc.server",
        "edge.secrets",
        "edge.workers",
    }
)
#: Not in a worker whose code makes no call to the core: the IPC's client and what it brings
#: (threads, the `socket` module: the runtime's own channel is a `_socket.socket`).
NOT_WITHOUT_CALLS = frozenset(
    {"edge.ipc.client", "edge.child.function", "edge.child.cache", "socket", "threading"}
)
#: Not in a worker that reads secrets without naming the typed client's TypedDicts.
NOT_WITHOUT_SHAPES = frozenset({"edge.child.shapes"})

#: Per handler: the modules it must not hold, and the imports that repeat its worker's own.
CASES = {
    "plain": (NEVER | NOT_WITHOUT_CALLS | NOT_WITHOUT_SHAPES, ""),
    "sdk": (
        NEVER | NOT_WITHOUT_SHAPES,
        "import greengrasssdk; greengrasssdk.client('secretsmanager')",
    ),
    "typed": (NEVER | NOT_WITHOUT_SHAPES, "import edge.child.function"),
}


@pytest.fixture
def deployed(env: Env, tmp_path: Path) -> Env:
    """The three functions, each granted one secret, deployed and applied."""
    arn, _, _ = env.create_secret("imports/db")
    path, digest = build_package(
        tmp_path / "loaded.zip", ("loaded_plain.py", "loaded_sdk.py", "loaded_typed.py")
    )
    code = {"Uri": path.as_uri(), "Sha256": digest}
    functions = [function(name, f"loaded_{name}.modules", code, policies=["db"]) for name in CASES]
    deployment = env.operator.deploy([secret_resource("db", arn)], functions=functions)
    env.operator.wait_status(deployment, "Success")
    return env


@pytest.mark.parametrize("name", list(CASES))
def test_a_worker_holds_only_what_it_needs(deployed: Env, name: str) -> None:
    forbidden, imports = CASES[name]
    held: list[str] = invoke(deployed, name, {"SecretId": "imports/db"})
    assert {"edge.child.exits", "msgpack"} <= set(held), f"not the runtime's modules: {held}"
    found = {m for m in held if any(m == f or m.startswith(f + ".") for f in forbidden)}
    # A package's submodules came with it (or, like `typing.io`, are names it registers).
    found = {m for m in found if m.rpartition(".")[0] not in found}
    if found:
        code = f"import edge.child.runtime, edge.child.confine; {imports}"
        which = explain(found, code, _base_environment(), flags=("-S", "-P"))
        pytest.fail(f"the {name} worker holds modules it shouldn't; imported by:\n{which}")


def test_the_check_names_what_imported_a_module() -> None:
    """The failure message's chain, on a module a worker does load: json, from the runtime."""
    code = "import edge.child.runtime"
    which = explain({"json.decoder"}, code, _base_environment(), flags=("-S",))
    assert which == "json.decoder: json.decoder <- json <- edge.child.runtime", which
