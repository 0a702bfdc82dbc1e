# SPDX-License-Identifier: Apache-2.0
"""The import rules of `edge/`, read from the source: no import cycle, and the child side apart.

Every `import` counts, including those inside functions and under `TYPE_CHECKING`: a cycle
of type-only imports still means two modules can't be read one without the other.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

EDGE = Path(__file__).resolve().parents[2] / "edge"
#: The child side: what runs inside a worker process.
CHILD = "edge.child"
#: What the child side may use besides itself: the IPC's client and framing (`edge.ipc`), and
#: the exceptions they raise. The rest of `edge.ipc` serves workers from the core.
SHARED_MODULES = frozenset({"edge", "edge.errors"})
SHARED_PACKAGES = ("edge.ipc",)
CORE_IPC = (
    "edge.ipc.server",
    "edge.ipc.peer",
    "edge.ipc.dispatch",
    "edge.ipc.answers",
    "edge.ipc.auth",
    "edge.ipc.limits",
    "edge.ipc.invalidations",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(EDGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(EDGE.rglob("*.py"))}


def _imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The modules of `edge` that `name` imports, each resolved to a module that exists."""

    def existing(dotted: str) -> str:
        while dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (existing(a.name) for a in node.names if a.name.split(".")[0] == "edge")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.split(".")[0] != "edge":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in modules else existing(base)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imported(name, path, modules)) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of the graph, as the modules along it, or [] where there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return []


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _child_may_use(name: str) -> bool:
    if _within(name, (CHILD,)) or name in SHARED_MODULES:
        return True
    return _within(name, SHARED_PACKAGES) and not _within(name, CORE_IPC)


def test_edge_has_no_import_cycle() -> None:
    assert _cycle(_graph()) == []


def test_a_cycle_is_found_where_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert set(_cycle(graph)) == {"a", "b", "c"}
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_child_side_reaches_nothing_of_the_core_side() -> None:
    """Everything the child side imports, directly or through others, is its own or shared."""
    graph = _graph()
    reached = {name for name in graph if _within(name, (CHILD,))}
    assert reached, f"no modules found under {CHILD}"
    todo = list(reached)
    while todo:
        for target in graph[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert sorted(name for name in reached if not _child_may_use(name)) == []


def test_the_worker_runtime_imports_no_core_module_when_it_starts() -> None:
    """What a worker process loads for real, the SDK's IPC client included: the same rule."""
    probe = (
        f"import sys; sys.path.insert(0, {str(EDGE / 'child' / 'compat')!r}); "
        "import edge.child.runtime, edge.child.confine, greengrass_ipc_python_sdk.ipc_client; "
        "print('\\n'.join(m for m in sys.modules if m == 'edge' or m.startswith('edge.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=EDGE.parent,
        timeout=60,
    )
    loaded = set(out.stdout.split())
    assert {"edge.child.runtime", "edge.ipc.client"} <= loaded
    assert sorted(name for name in loaded if not _child_may_use(name)) == []
