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

Targets (issue 3): the native client at least 5x the baseline's throughput at 1 and 4 clients,
p99 <= 100 us with one client, <= 15 us of core CPU per request.

Run: `.venv/bin/python bench/ipc.py [--seconds 3] [--clients 1,4] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.ipc.client import IpcClient
from edge.ipc.protocol import OP_GET_SECRET_VALUE, Request, Response

THROUGHPUT_RATIO_TARGET = 5.0
P99_TARGET_US = 100.0
SERVER_CPU_TARGET_US = 15.0
SECRET_NAME = "bench/db-password"
#: What Secrets Manager's GetSecretValue answers for a 40-character string secret.
ANSWER: dict[str, Any] = {
    "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:bench/db-password-AbCdEf",
    "Name": SECRET_NAME,
    "VersionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
    "SecretString": "correct-horse-battery-staple-0123456789ab",
    "VersionStages": ["AWSCURRENT"],
    "CreatedDate": 1764331200.123,
}
SECRETS = {SECRET_NAME: ANSWER, ANSWER["ARN"]: ANSWER}
WARMUP_CALLS = 500
SDK_HOOK = "through greengrasssdk inside a real function"


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
    parser.add_argument("--sdk", action="store_true", help=f"also measure {SDK_HOOK}")
    return parser.parse_args()


# --- the processes ----------------------------------------------------------------------------


def use_loop(no_uvloop: bool) -> str:  # noqa: FBT001 - a command-line switch
    """Install uvloop unless told not to or missing; return the loop's name."""
    if not no_uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional dependency
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return f"uvloop {uvloop.__version__}"
    return "asyncio (default)"


def answer_secret(_identity: object, request: Request) -> Response:
    """The benchmark's handler: a synchronous in-memory lookup, as the core's is."""
    secret = SECRETS.get(request.args.get("SecretId", ""))
    if secret is None:
        return Response.failure(request.request_id, 404, "no such secret")
    return Response.success(request.request_id, secret)


def run_ipc_server(socket_path: str, token: str, no_uvloop: bool) -> None:  # noqa: FBT001
    """Serve until stdin closes; print one ready line with the loop's name."""
    from edge.ipc.server import IpcServer, WorkerIdentity  # noqa: PLC0415
    from edge.log import configure_logging  # noqa: PLC0415

    # Logs go to stderr: stdout carries the ready line to the conductor.
    configure_logging(level="warning", stream=sys.stderr)
    loop_name = use_loop(no_uvloop)

    async def serve() -> None:
        async with IpcServer(socket_path=Path(socket_path), handler=answer_secret) as server:
            server.register(token, WorkerIdentity(function_arn="bench", uid=os.getuid()))
            print(json.dumps({"loop": loop_name}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(serve())


def run_http_server(token: str, no_uvloop: bool) -> None:  # noqa: FBT001
    """Serve the baseline until stdin closes; print one ready line with port and loop."""
    from aiohttp import web  # noqa: PLC0415 - only the baseline needs it

    loop_name = use_loop(no_uvloop)

    async def get_secret(request: web.Request) -> web.Response:
        if request.headers.get("X-Aws-Parameters-Secrets-Token") != token:
            return web.json_response({"Message": "missing or wrong token"}, status=401)
        secret = SECRETS.get(request.query.get("secretId", ""))
        if secret is None:
            return web.json_response({"Message": "no such secret"}, status=404)
        return web.json_response(secret)

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/secretsmanager/get", get_secret)
        # No access log: the agent-style servers don't write one per request either.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"loop": loop_name, "port": port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(serve())


def client_loop(call: Any, seconds: float) -> None:
    """Warm up, say ready, wait for go, call for `seconds`, print latencies and CPU time."""
    for _ in range(WARMUP_CALLS):
        call()
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[int] = []
    append = latencies.append
    clock = time.perf_counter_ns
    cpu_before = time.process_time()
    end = clock() + int(seconds * 1e9)
    now = clock()
    while now < end:
        call()
        after = clock()
        append(after - now)
        now = after
    cpu = time.process_time() - cpu_before
    print(json.dumps({"latencies_ns": latencies, "cpu_seconds": cpu}), flush=True)


def run_ipc_client(socket_path: str, token: str, seconds: float) -> None:
    """A worker-like process calling get_secret_value in a loop."""
    client = IpcClient(socket_path, token)
    args = {"SecretId": SECRET_NAME, "VersionStage": "AWSCURRENT"}

    def call() -> None:
        if client.call(OP_GET_SECRET_VALUE, args)["Name"] != SECRET_NAME:
            raise RuntimeError("wrong answer")

    client_loop(call, seconds)
    client.close()


def run_http_client(port: int, token: str, seconds: float) -> None:
    """A Lambda-extension-style client: keep-alive http.client, JSON decoded."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    path = f"/secretsmanager/get?secretId={SECRET_NAME}"
    headers = {"X-Aws-Parameters-Secrets-Token": token}

    def call() -> None:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if json.loads(response.read())["Name"] != SECRET_NAME:
            raise RuntimeError("wrong answer")

    client_loop(call, seconds)
    conn.close()


# --- the conductor ----------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run of one mode."""

    requests_per_second: float
    p50_us: float
    p99_us: float
    server_cpu_us: float
    client_cpu_us: float


@dataclass
class Mode:
    """A server and a client count, with its runs."""

    kind: str  # "ipc" or "http"
    clients: int
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> Run:
        """The run with the median throughput."""
        ordered = sorted(self.runs, key=lambda r: r.requests_per_second)
        return ordered[len(ordered) // 2]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start this script in another role, with pipes to talk to it."""
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def server(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A server process, stopped by closing its stdin."""
    proc = spawn(*args)
    try:
        info = json.loads(proc.stdout.readline())
        yield proc, info
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(
    server_pid: int, client_args: list[str], clients: int, seconds: float, *, pin: bool
) -> Run:
    """Run `clients` client processes together and gather what they measured."""
    procs = [spawn(*client_args) for _ in range(clients)]
    if pin and clients == 1:
        os.sched_setaffinity(procs[0].pid, os.sched_getaffinity(server_pid))
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a client failed to start")
        before = cpu_seconds(server_pid)
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        latencies: list[int] = []
        client_cpu = 0.0
        for proc in procs:
            result = json.loads(proc.stdout.readline())
            latencies.extend(result["latencies_ns"])
            client_cpu += result["cpu_seconds"]
        after = cpu_seconds(server_pid)
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.wait(10)
    latencies.sort()
    count = len(latencies)
    return Run(
        requests_per_second=count / seconds,
        p50_us=latencies[count // 2] / 1000,
        p99_us=latencies[min(count - 1, int(count * 0.99))] / 1000,
        server_cpu_us=(after - before) / count * 1e6,
        client_cpu_us=client_cpu / count * 1e6,
    )


def report(args: argparse.Namespace, modes: list[Mode], loops: dict[str, str]) -> None:
    """Print the markdown table and the verdict on each target."""
    pinning = "one client pinned to the server's CPU" if args.pin else "not pinned"
    print(
        f"\n{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.seconds:g} s per mode, {args.repeat} run(s), "
        f"median run by throughput shown; {pinning}.\n"
        f"ipc server loop: {loops['ipc']}; http server loop: {loops['http']}\n"
    )
    print(
        "| mode | clients | req/s | p50 µs | p99 µs | server CPU µs/req "
        "| client CPU µs/req | vs baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    baseline = {m.clients: m.median for m in modes if m.kind == "http"}
    verdicts: list[str] = []
    for mode in modes:
        run = mode.median
        title = "native IpcClient" if mode.kind == "ipc" else "**baseline**: aiohttp + http.client"
        ratio = run.requests_per_second / baseline[mode.clients].requests_per_second
        print(
            f"| {title} | {mode.clients} | {run.requests_per_second:,.0f} | {run.p50_us:.1f} "
            f"| {run.p99_us:.1f} | {run.server_cpu_us:.1f} | {run.client_cpu_us:.1f} "
            f"| {ratio:.2f}x |"
        )
        if mode.kind != "ipc":
            continue
        verdicts.append(
            f"throughput >= {THROUGHPUT_RATIO_TARGET:g}x baseline at {mode.clients} client(s): "
            f"{ratio:.2f}x -> {'met' if ratio >= THROUGHPUT_RATIO_TARGET else 'NOT met'}"
        )
        verdicts.append(
            f"core CPU <= {SERVER_CPU_TARGET_US:g} µs/request at {mode.clients} client(s): "
            f"{run.server_cpu_us:.1f} -> "
            f"{'met' if run.server_cpu_us <= SERVER_CPU_TARGET_US else 'NOT met'}"
        )
        if mode.clients == 1:
            verdicts.append(
                f"p99 <= {P99_TARGET_US:g} µs with 1 client: {run.p99_us:.1f} -> "
                f"{'met' if run.p99_us <= P99_TARGET_US else 'NOT met'}"
            )
    if args.sdk:
        print(f"| {SDK_HOOK} | - | not yet available | | | | | |")
    print()
    for line in verdicts:
        print(f"- {line}")


def play_role(role: str, rest: list[str]) -> None:
    """Run as one of the benchmark's processes (internal subcommands)."""
    if role == "_ipc-server":
        run_ipc_server(rest[0], rest[1], rest[2] == "1")
    elif role == "_http-server":
        run_http_server(rest[0], rest[1] == "1")
    elif role == "_ipc-client":
        run_ipc_client(rest[0], rest[1], float(rest[2]))
    elif role == "_http-client":
        run_http_client(int(rest[0]), rest[1], float(rest[2]))


def conduct(args: argparse.Namespace, modes: list[Mode], workdir: Path) -> dict[str, str]:
    """Start both servers, run every mode `--repeat` times (interleaved); return loop names."""
    token = secrets.token_urlsafe(32)
    no_uv = "1" if args.no_uvloop else "0"
    socket_path = str(workdir / "ipc" / "core.sock")
    with (
        server("_ipc-server", socket_path, token, no_uv) as (ipc, ipc_info),
        server("_http-server", token, no_uv) as (web, web_info),
    ):
        if args.pin:
            first_cpu = min(os.sched_getaffinity(0))
            os.sched_setaffinity(ipc.pid, {first_cpu})
            os.sched_setaffinity(web.pid, {first_cpu})
        for repeat in range(args.repeat):
            for mode in modes:
                if mode.kind == "ipc":
                    pid, client = ipc.pid, ["_ipc-client", socket_path, token]
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
        return {"ipc": ipc_info["loop"], "http": web_info["loop"]}


def main() -> None:
    """Conduct the benchmark, or play one of its roles."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        play_role(sys.argv[1], sys.argv[2:])
        return
    args = parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    modes = [Mode(kind, n) for n in counts for kind in ("ipc", "http")]
    workdir = Path(tempfile.mkdtemp(prefix="edge-ipc-bench-"))
    try:
        loops = conduct(args, modes, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.sdk:
        print(f"{SDK_HOOK}: not yet available (needs edge.workers)", file=sys.stderr)
    report(args, modes, loops)


if __name__ == "__main__":
    main()
