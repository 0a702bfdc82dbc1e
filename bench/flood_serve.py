# SPDX-License-Identifier: Apache-2.0
"""Floods against a real `edge cloud serve`: half-sent request heads, unauthenticated bodies.

    .venv/bin/python bench/flood_serve.py [--heads 400] [--bodies 600] [--body-mib 2]
                                          [--concurrency 150] [--samples 30] [--repeat 3]

Starts Mosquitto and `python -m edge cloud serve` on loopback (no moto: nothing here touches
S3), then for each flood prints the service's RSS (VmRSS from /proc) before, at its peak during
and after the flood's connections have closed, its most open descriptors, and the median time
of a signed boto3 `ListGroups` during the flood against the same call with no flood (the
baseline, measured just before each flood in the same run), as a ratio. With `--repeat` above 1
it runs the pair that many times on the same service and ends with the median of each figure.

* slow heads: `--heads` connections each send half a request head and stop; the signed client
  runs while they are all open (the service closes them after its head timeout);
* unauthenticated bodies: `--bodies` POSTs with a `--body-mib` MiB body and no signature, from
  `--concurrency` threads, each sending its whole body (as fast as the service lets it).

The flood helpers (`half_heads`, `unsigned_bodies`, `vm_rss_kib`, `open_fds`) are also what
tests/integration/test_cloud_serve.py floods the service with.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# tests/integration/test_cloud_serve.py takes these from here with the flood helpers.
from edge.fixtures.procfs import open_fds, vm_rss_kib

#: A request head cut short: the request line and part of one header, no blank line.
HALF_HEAD = b"POST /greengrass/groups HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"


def half_heads(port: int, count: int) -> list[socket.socket]:
    """Open `count` connections that each send half a request head and then nothing."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(HALF_HEAD)
        socks.append(sock)
    return socks


def wait_closed(socks: list[socket.socket], timeout: float) -> int:
    """Wait until the service has closed every connection; return how many it closed."""
    deadline = time.monotonic() + timeout
    closed = 0
    for sock in socks:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                closed += 1
        except ConnectionResetError:
            closed += 1
        except TimeoutError:
            pass
        sock.close()
    return closed


def unsigned_body(port: int, size: int) -> str:
    """POST `size` bytes with no signature; return the status line, or how the send ended."""
    head = (
        f"POST /greengrass/groups HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    chunk = b"x" * (256 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head)
            sent = 0
            while sent < size:
                sock.sendall(chunk[: size - sent])
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service answered and closed without reading the body: the point
        try:
            answer = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return "reset"
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") if answer else "closed"


def unsigned_bodies(port: int, count: int, size: int, concurrency: int) -> Counter[str]:
    """Send `count` unsigned bodies from `concurrency` threads; count the outcomes."""
    with ThreadPoolExecutor(concurrency) as pool:
        return Counter(pool.map(lambda _: unsigned_body(port, size), range(count)))


class Sampler:
    """Samples a process's RSS and descriptors in a thread: the peak while a flood runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self.peak_fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        """Stop sampling, with a last sample."""
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, vm_rss_kib(self.pid))
        self.peak_fds = max(self.peak_fds, open_fds(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()


# --- the run -------------------------------------------------------------------------------------


KEY_ID = "EDGEBENCHOPERATOR001"
REGION = "us-east-1"


@contextlib.contextmanager
def service(root: Path) -> Iterator[tuple[int, int, str]]:
    """A broker and `edge cloud serve` in `root`; yields (pid, port, secret access key)."""
    from edge.fixtures.services import AWS_TEST_ENV, free_port, run_mosquitto  # noqa: PLC0415

    with run_mosquitto(root / "mosquitto") as broker:
        port = free_port()
        secret = secrets.token_urlsafe(30)
        (root / "operator.secret").write_text(secret + "\n")
        (root / "operator.secret").chmod(0o600)
        config = root / "cloud.toml"
        config.write_text(
            f'[cloud]\ndatabase = "edge-cloud.db"\nsigning_key = "signing.pem"\n'
            f'listen = "127.0.0.1:{port}"\n\n[cloud.auth]\n'
            f'keys = [{{access_key_id = "{KEY_ID}", secret_access_key_file = "operator.secret"}}]'
            f'\n\n[mqtt]\nurl = "{broker.url}"\n\n[aws]\nregion = "{REGION}"\n'
        )
        env = {**os.environ, **AWS_TEST_ENV}
        edge = [sys.executable, "-m", "edge"]
        subprocess.run([*edge, "cloud", "--config", str(config), "init"], env=env, check=True)
        with (root / "serve.log").open("wb") as log:
            proc = subprocess.Popen(
                [*edge, "--log-format", "json", "cloud", "--config", str(config), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            deadline = time.monotonic() + 30
            while b"cloud.serve.listening" not in (root / "serve.log").read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "serve.log").read_text())
                time.sleep(0.05)
            yield proc.pid, port, secret
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def signed_latencies(
    port: int, secret: str, samples: int, until: Callable[[], bool] = lambda: True
) -> list[float]:
    """Seconds each signed ListGroups call took: at least `samples`, in a row, until `until()`.

    One boto3 client, as a script would use it (keep-alive, no retries).
    """
    import boto3  # noqa: PLC0415 - only the run needs it
    from botocore.config import Config  # noqa: PLC0415

    client: Any = boto3.client(
        "greengrass",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    times: list[float] = []
    while len(times) < samples or not until():
        start = time.perf_counter()
        client.list_groups()
        times.append(time.perf_counter() - start)
    return times


Flood = Callable[[], tuple[Callable[[], bool], Callable[[], str]]]


def flood(
    name: str, start: Flood, *, pid: int, port: int, secret: str, samples: int
) -> dict[str, Any]:
    """Run one flood: `start` begins it and returns (is it over?, finish it and describe it)."""
    before = vm_rss_kib(pid)
    with Sampler(pid) as sampler:
        over, finish = start()
        during = signed_latencies(port, secret, samples, over)
        outcome = finish()
    time.sleep(2)  # the service's last closes and frees
    return {
        "flood": name,
        "rss_before_mib": before / 1024,
        "rss_peak_mib": sampler.peak_rss / 1024,
        "rss_after_mib": vm_rss_kib(pid) / 1024,
        "fds_peak": sampler.peak_fds,
        "median_ms": statistics.median(during) * 1000,
        "outcome": outcome,
    }


def main() -> None:
    """Run both floods and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=400)
    parser.add_argument("--bodies", type=int, default=600)
    parser.add_argument("--body-mib", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=150)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = int(args.body_mib * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp, service(Path(tmp)) as (pid, port, secret):
        signed_latencies(port, secret, 5)  # warm up: connections, imports, the database

        def heads() -> tuple[Callable[[], bool], Callable[[], str]]:
            socks = half_heads(port, args.heads)

            def finish() -> str:
                closed = wait_closed(socks, timeout=60)
                return f"{closed}/{len(socks)} half-sent requests closed by the service"

            return lambda: True, finish

        def bodies() -> tuple[Callable[[], bool], Callable[[], str]]:
            pool = ThreadPoolExecutor(1)
            future = pool.submit(unsigned_bodies, port, args.bodies, size, args.concurrency)

            def finish() -> str:
                outcomes = future.result()
                pool.shutdown()
                return "answers: " + ", ".join(
                    f"{n} x {what!r}" for what, n in outcomes.most_common()
                )

            return future.done, finish

        rows: list[dict[str, Any]] = []
        for _ in range(args.repeat):
            baseline = statistics.median(signed_latencies(port, secret, args.samples)) * 1000
            print(f"baseline: signed ListGroups median {baseline:.1f} ms, no flood")
            for name, start in (("slow heads", heads), ("unauthenticated bodies", bodies)):
                row = flood(name, start, pid=pid, port=port, secret=secret, samples=args.samples)
                row["ratio"] = row["median_ms"] / baseline
                rows.append(row)
                print(_line(row))
        if args.repeat > 1:
            print(f"medians of {args.repeat} runs:")
            for name in ("slow heads", "unauthenticated bodies"):
                mine = [r for r in rows if r["flood"] == name]
                median = {k: statistics.median(r[k] for r in mine) for k in _FIGURES}
                print(_line({"flood": name, "outcome": mine[-1]["outcome"], **median}))


_FIGURES = ("rss_before_mib", "rss_peak_mib", "rss_after_mib", "fds_peak", "median_ms", "ratio")


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['flood']}: RSS {row['rss_before_mib']:.1f} MiB before, "
        f"{row['rss_peak_mib']:.1f} peak during, {row['rss_after_mib']:.1f} after; "
        f"{row['fds_peak']:.0f} descriptors at peak; signed ListGroups median "
        f"{row['median_ms']:.1f} ms ({row['ratio']:.2f}x baseline); {row['outcome']}"
    )


if __name__ == "__main__":
    main()
