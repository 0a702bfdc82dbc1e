"""What a process imported, and through which modules, from CPython's own import record.

With `-X importtime` (or PYTHONPROFILEIMPORTTIME set) a process writes one `import time:` line
to its stderr for every module it imports, when the import ends: a module's line comes after
the lines of the modules it imported, indented one level deeper (two spaces) than its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PREFIX = "import time:"


def _records(text: str) -> list[tuple[int, str]]:
    """(depth, module) of every import line of `text`, in order; the header line is skipped."""
    records = []
    for line in text.splitlines():
        if not line.startswith(_PREFIX) or line.endswith("imported package"):
            continue
        field = line.rsplit("|", 1)[-1]
        name = field.strip()
        # One space after the bar, then two per level.
        records.append(((len(field) - len(field.lstrip(" ")) - 1) // 2, name))
    return records


def imported_by(log_text: str) -> tuple[set[str], set[str]]:
    """(modules the core imported, modules its relayed children imported), from its log.

    The core's stderr is its log file, so a line there that *starts* with `import time:` is
    an import by the core itself; a child's lines reach the same log only inside the core's
    JSON events (its stderr is a pipe the core relays).
    """
    own = {name for _, name in _records(log_text)}
    relayed: set[str] = set()
    for line in log_text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        text = event.get("line") if isinstance(event, dict) else None
        if isinstance(text, str) and text.startswith(_PREFIX):
            relayed.add(text.rsplit("|", 1)[-1].strip())
    return own, relayed


def top_level(modules: set[str]) -> set[str]:
    """The top-level packages of `modules`."""
    return {m.split(".", 1)[0] for m in modules}


def import_chain(text: str, module: str) -> list[str]:
    """`module`, then the module that first imported it, and so on up to a top-level import.

    Empty when `text` has no import of `module`.
    """
    records = _records(text)
    for at, (depth, name) in enumerate(records):
        if name != module:
            continue
        chain, level = [name], depth
        for later_depth, later in records[at + 1 :]:
            if later_depth < level:
                chain.append(later)
                level = later_depth
        return chain
    return []


def explain(
    modules: set[str], code: str, env: dict[str, str], *, flags: tuple[str, ...] = ()
) -> str:
    """Run `code` with `-X importtime` and say which import brought in each of `modules`.

    For a failure message: `code` repeats the imports of the process under test, in a fresh
    interpreter started with `flags` and `env`.
    """
    result = subprocess.run(
        [sys.executable, *flags, "-X", "importtime", "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = []
    for module in sorted(modules):
        chain = import_chain(result.stderr, module)
        how = " <- ".join(chain) if chain else "not when imported (later, while serving a call)"
        lines.append(f"{module}: {how}")
    return "\n".join(lines)
