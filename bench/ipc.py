# SPDX-License-Identifier: Apache-2.0
"""Time get_secret_value round trips through the worker IPC against a loopback HTTP baseline.

Two servers run in processes of their own, so their CPU time can be read from /proc:

  (ipc)  edge.ipc.server.IpcServer on a Unix socket, answering
         `secretsmanager.get_secret_value` from an in-memory dict, to `IpcClient`s;
  (http) the named baseline: an aiohttp server on 127.0.0.1 answering the same JSON at
         GET /secretsmanager/get?secretId=... (the AWS Secrets Manager Agent and Lambda
         secrets extension style, SSRF token header included) to keep-alive
         `http.client.HTTPConnection` clients, Python's standard blocking HTTP client.

Both servers use uvloop when it is importable (`pip install -e .[fast]`), else asyncio's
default loop; the table says which. For each client count in `--clients`, N client processes
connect, warm up, then call in a loop for `--seconds` (all start together). Reported per mode:
requests/s summed over clients, p50 and p99 latency in microseconds, the server's CPU time per
request, and the ratio of our throughput to the baseline's with the same number of clients.
`--repeat R` runs everything R times, interleaved, and reports the median run by throughput.
`--pin` puts a lone client on the server's CPU: on a VM, a ping-pong between two vCPUs pays the
hypervisor's wake-up cost on every message (here ~100 µs instead of a few), and whether the
kernel co-locates the two processes decides the one-client figures more than the code does.

`--sdk` adds a third mode, the same call through the unmodified `greengrasssdk` inside real
functions: it starts Mosquitto and moto's server (edge/fixtures/services.py), a real core
(`python -m edge run`, uvloop when installed, as deployed), creates the secret in moto, deploys
it unsigned with one pinned function per client (bench/functions/sdk_loop.py zipped with the
`greengrasssdk` package from site-packages, granted the secret) and, per run, starts one
`edge invoke` per client. Each invocation calls `get_secret_value(SecretId=...)` in a loop for
`--seconds` from a common start time and answers its latencies, its own CPU time and the core's
CPU ticks (/proc) over the window. The "client" of that mode is the worker process.

Through greengrasssdk, repeated reads are answered by the worker's cache of answers
(`edge.child.cache`) and first reads are round trips to the core: the `sdk-first` mode is a
second function with its cache off (`EDGE_ANSWER_CACHE=off`), so every read is a first read.

`--breakdown` times, in a worker-like process against the (ipc) server, each layer of a cached
read through greengrasssdk, and a first read (a round trip) through each layer: the native
request, the SDK's JSON request and the core's JSON answer, the compat layer, the whole SDK call.
`--server-timer` keeps a 100 ms timer pending in the (ipc) server, as a real core always has.

Targets: repeated reads through greengrasssdk at least 10x the baseline's throughput, unpinned,
p99 <= 100 us; first reads (p50) within 10% of the bare round trip; the native client at least
5x the baseline's throughput at 1 and 4 clients, p99 <= 100 us with one client, <= 15 us of
core CPU per request.

Run: `.venv/bin/python bench/ipc.py [--seconds 3] [--clients 1,4] [--repeat 3] [--pin] [--sdk]
[--breakdown] [--server-timer]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The parts, after the path is set (bench/ipcbench/__init__.py lists them).
from bench.ipcbench.breakdown import breakdown, run_breakdown, run_first_read_breakdown
from bench.ipcbench.clients import run_bare_client, run_http_client, run_ipc_client
from bench.ipcbench.measure import Mode, measure, server
from bench.ipcbench.report import report
from bench.ipcbench.sdk import core_loop_name, measure_sdk, sdk_core
from bench.ipcbench.servers import run_bare_server, run_http_server, run_ipc_server


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per mode")
    parser.add_argument("--clients", default="1,4", help="client process counts, e.g. 1,4")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every mode; median kept")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use asyncio's default loop in both servers"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin both servers to one CPU and a lone client to that same CPU (runs with "
        "several clients stay unpinned): takes a hypervisor's cross-CPU wake-up cost out of "
        "the one-client figures",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each layer of a cached greengrasssdk read (in one worker-like process "
        "served by the bench's IPC server, unpinned), and of a first read (each call a round "
        "trip; on the server's CPU with --pin)",
    )
    parser.add_argument(
        "--server-timer",
        action="store_true",
        help="keep a 100 ms timer pending in the bench's IPC server, as a real core always has "
        "one (its workers' memory polls): every wait of its loop then arms a kernel timer",
    )
    parser.add_argument(
        "--sdk",
        action="store_true",
        help="also measure the same call through greengrasssdk inside real functions on a real "
        "core (`edge run` with Mosquitto and moto's server; one function per client)",
    )
    return parser.parse_args()


def play_role(role: str, rest: list[str]) -> None:
    """Run as one of the benchmark's processes (internal subcommands)."""
    if role == "_ipc-server":
        run_ipc_server(rest[0], rest[1], rest[2] == "1", rest[3] == "1")
    elif role == "_http-server":
        run_http_server(rest[0], rest[1] == "1")
    elif role == "_ipc-client":
        run_ipc_client(rest[0], rest[1], float(rest[2]))
    elif role == "_http-client":
        run_http_client(int(rest[0]), rest[1], float(rest[2]))
    elif role == "_bare-server":
        run_bare_server(rest[0], rest[1] == "1")
    elif role == "_bare-client":
        run_bare_client(rest[0], float(rest[1]))
    elif role == "_breakdown":
        run_breakdown(rest[0], rest[1])
    elif role == "_first-read-breakdown":
        run_first_read_breakdown(rest[0], rest[1])


def conduct(args: argparse.Namespace, modes: list[Mode], workdir: Path) -> dict[str, str]:
    """Start the servers, run every mode `--repeat` times (interleaved); return loop names."""
    token = secrets.token_urlsafe(32)
    no_uv = "1" if args.no_uvloop else "0"
    socket_path = str(workdir / "ipc" / "core.sock")
    first_cpu = min(os.sched_getaffinity(0))
    sdk_clients = max((m.clients for m in modes if m.kind == "sdk"), default=0)
    with contextlib.ExitStack() as stack:
        # The core first (its deployment takes a few seconds), pinned from birth with --pin.
        world = (
            stack.enter_context(
                sdk_core(workdir, sdk_clients, args.seconds, first_cpu if args.pin else None)
            )
            if sdk_clients
            else None
        )
        timer = "1" if args.server_timer else "0"
        ipc, ipc_info = stack.enter_context(server("_ipc-server", socket_path, token, no_uv, timer))
        web, web_info = stack.enter_context(server("_http-server", token, no_uv))
        bare_path = str(workdir / "bare.sock")
        bare, _bare_info = stack.enter_context(server("_bare-server", bare_path, no_uv))
        if args.pin:
            for proc in (ipc, web, bare):
                os.sched_setaffinity(proc.pid, {first_cpu})
        for repeat in range(args.repeat):
            for mode in modes:
                if mode.kind.startswith("sdk"):
                    assert world is not None  # noqa: S101 - started above for sdk modes
                    run = measure_sdk(
                        world,
                        mode.clients,
                        args.seconds,
                        pin=args.pin,
                        first=mode.kind == "sdk-first",
                    )
                else:
                    if mode.kind == "ipc":
                        pid, client = ipc.pid, ["_ipc-client", socket_path, token]
                    elif mode.kind == "bare":
                        pid, client = bare.pid, ["_bare-client", bare_path]
                    else:
                        pid, client = web.pid, ["_http-client", str(web_info["port"]), token]
                    run = measure(
                        pid, [*client, str(args.seconds)], mode.clients, args.seconds, pin=args.pin
                    )
                mode.runs.append(run)
                print(
                    f"run {repeat + 1}/{args.repeat} {mode.kind} x{mode.clients}: "
                    f"{run.requests_per_second:,.0f} req/s, p50 {run.p50_us:.1f} µs, "
                    f"p99 {run.p99_us:.1f} µs, server {run.server_cpu_us:.1f} µs/req, "
                    f"client {run.client_cpu_us:.1f} µs/req",
                    file=sys.stderr,
                )
        loops = {"ipc": ipc_info["loop"], "http": web_info["loop"]}
        if world is not None:
            loops["sdk"] = core_loop_name()
        if args.breakdown:
            loops["breakdown"] = breakdown("_breakdown", socket_path, token)
            loops["first-read-breakdown"] = breakdown(
                "_first-read-breakdown", socket_path, token, {first_cpu} if args.pin else None
            )
        return loops


def main() -> None:
    """Conduct the benchmark, or play one of its roles."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        play_role(sys.argv[1], sys.argv[2:])
        return
    args = parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    kinds = ("sdk", "http", "sdk-first", "bare", "ipc") if args.sdk else ("http", "bare", "ipc")
    # First reads (every read a round trip) are compared with the bare round trip at 1 client.
    modes = [Mode(kind, n) for n in counts for kind in kinds if kind != "sdk-first" or n == 1]
    workdir = Path(tempfile.mkdtemp(prefix="edge-ipc-bench-"))
    try:
        loops = conduct(args, modes, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, modes, loops)


if __name__ == "__main__":
    main()
