# SPDX-License-Identifier: Apache-2.0
"""The child side: what runs inside a worker process, before and around the function's code.

`runtime` loads the handler and answers invocations; `confine` applies the core's plan first,
with `mountns`, `landlock`, `privileges` and `seccomp`; `compat/` holds the V1 modules the
`greengrasssdk` package imports. The core side that spawns and serves workers is
`edge.workers`.

The rule: nothing here imports from the core side (`edge.workers`, `edge.secrets`, the config,
logging set-up, asyncio parts). A worker reaches the core only through the IPC's client and
sans-IO framing (`edge.ipc.client`, `edge.ipc.protocol`); `tests/unit/test_layout.py` checks
it. The worker's memory budget (V1's 16 MB MemorySize) is the other reason: this package
imports nothing when it is imported.

For the same budget, nothing a worker loads on its own (this package, `edge.errors`, the IPC's
client and framing) imports `typing` at run time: with `typing` come `contextlib` and a few
hundred KB of its own, about 0.6 MB in all. Names used only in annotations, which are never
evaluated (PEP 563), are imported under a module-level `TYPE_CHECKING = False`, which mypy
reads as true; records are slotted classes rather than `NamedTuple`s or dataclasses; the typed
client's `TypedDict`s load on first use (`shapes`). `tests/integration/test_worker_imports.py`
checks what a running worker holds.
"""
