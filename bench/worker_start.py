"""What each confinement wall costs a worker: start time to its first answer, and its memory.

    .venv/bin/python bench/worker_start.py [--workers 20]

Starts real workers (`WorkerProcess`, as the core does) of a one-line handler, one at a time
and interleaved, under three sandboxes built like the core's (`Sandbox.create` with a state
dir, a key, a config and an IPC socket to hide): none (`sandbox = "off"`), Landlock and
seccomp without the mount namespace, and all three walls. For each: the median time from
spawn to the first invocation's answer (interpreter start, confinement, handler import, one
round trip), and the median resident memory the worker owns after it (RssAnon + RssShmem,
what MemorySize is checked against) and in all (VmRSS). Workers switch to no other user here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edge.fixtures.procfs import vm_rss_kib
from edge.ipc.protocol import Invoke
from edge.log import configure_logging, get_logger
from edge.workers.process import Launch, WorkerProcess, resident_kb
from edge.workers.sandbox import Sandbox
from edge.workers.spec import CodeRef, FunctionSpec

HANDLER = "def handler(event, context):\n    return {'ok': True}\n"


async def one(launch: Launch, spec: FunctionSpec, code: Path) -> tuple[float, int, int]:
    """Start a worker, invoke it once: (seconds to the answer, owned KB, VmRSS KB)."""
    worker = WorkerProcess(
        spec=spec, code_dir=code, token="t" * 43, launch=launch, logger=get_logger("bench")
    )
    started = time.perf_counter()
    await worker.start()
    outcome = await worker.invoke(
        Invoke(
            invocation_id="1",
            function_arn=spec.function_arn,
            payload=b"{}",
            client_context="",
            invocation_type="RequestResponse",
            deadline_ms=int((time.monotonic() + 30) * 1000),
        )
    )
    took = time.perf_counter() - started
    assert outcome.payload == b'{"ok": true}', outcome  # noqa: S101 - a bench's sanity check
    assert worker.pid is not None  # noqa: S101
    owned, total = resident_kb(worker.pid) or 0, vm_rss_kib(worker.pid)
    await worker.stop()
    return took, owned, total


async def main(workers: int) -> None:
    """Measure each sandbox in turn and print a table."""
    configure_logging(level="warning", fmt="console")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state, code = root / "state", root / "code"
        (state / "ipc").mkdir(parents=True, mode=0o700)
        code.mkdir()
        (code / "fn.py").write_text(HANDLER)
        (state / "core.key").write_text("key")
        (root / "core.toml").write_text("config")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(state / "ipc" / "core.sock"))
        full = Sandbox.create(
            mode="auto",
            hidden=(state, state / "core.key", root / "core.toml"),
            protected=(code,),
            writable=(Path("/var/tmp"),),  # noqa: S108 - the workers' default
            reachable=(state / "ipc" / "core.sock",),
        )
        sandboxes = {
            "off": None,
            "landlock + seccomp": dataclasses.replace(full, namespace=""),
            "namespace + landlock + seccomp": full,
        }
        spec = FunctionSpec(
            function_id="bench",
            function_arn="arn:aws:lambda:us-east-1:123456789012:function:bench:1",
            handler="fn.handler",
            code=CodeRef(uri=code.as_uri()),
        )
        print(
            f"walls available: landlock ABI {full.abi}, namespace {full.namespace or 'none'}, "
            f"seccomp {full.seccomp}; {workers} workers each, medians"
        )
        print(f"{'sandbox':34} {'start ms':>9} {'owned KB':>9} {'VmRSS KB':>9}")
        launches = {
            name: Launch(socket_path=state / "ipc" / "core.sock", sandbox=sandbox)
            for name, sandbox in sandboxes.items()
        }
        runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in sandboxes}
        for _ in range(workers):  # interleaved, so that a busy moment hits every sandbox alike
            for name, launch in launches.items():
                runs[name].append(await one(launch, spec, code))
        for name, results in runs.items():
            took, owned, total = (statistics.median(r[i] for r in results) for i in range(3))
            print(f"{name:34} {took * 1000:9.1f} {owned:9.0f} {total:9.0f}")
        listener.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=20)
    asyncio.run(main(parser.parse_args().workers))
    sys.exit(0)
