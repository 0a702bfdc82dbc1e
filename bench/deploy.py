# SPDX-License-Identifier: Apache-2.0
"""Time a deployment's secret fetch (batched, concurrent, one by one) and the store rotation.

Starts its own moto server, creates `--secrets` secrets with `--labels` staging labels each
(AWSCURRENT plus extra labels, every label on its own version), puts a proxy that adds
`--latency-ms` to every call in front of it, then times in one run:

  (a) AwsSecretSource, concurrency 16, BatchGetSecretValue for AWSCURRENT
  (b) AwsSecretSource, concurrency 16, GetSecretValue only
  (c) the named baseline: the same pairs one by one (concurrency 1, GetSecretValue only),
      which is what a fetcher that loops over resources and labels does
  (d) the store rotation alone, as the core does it: ChildStore.asave (sealed with a fresh
      data key in the crypto child, then atomic replace and fsync) of what (a) fetched
  (d0) for reference, the same sealed in this process: SecretStore.save

and prints medians over `--repeat` runs as a markdown table, with the speedups of (a) and (b)
over (c) (target >= 10x) and the rotation's share of a deployment, (d) / ((a) + (d))
(target < 5%). Run: `.venv/bin/python bench/deploy.py [--secrets 300 --labels 3 ...]`.

`--incremental` measures incremental fetch instead: the API calls (and time) of a redeploy of
an unchanged group, and of one after 10% of the secrets rotated, each done the old way (a full
fetch) and the new way (DescribeSecret first, then only the versions the core lacks).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

# The benchmark runs as a script from the repository; reuse the test suite's moto launcher.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
import structlog
from botocore.config import Config

from bench.latency_proxy import LatencyProxy
from edge.config import FetchSettings
from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION, run_moto
from edge.model import SecretResource
from edge.secrets.contents import LocalSecret, StoreContents
from edge.secrets.fetch import AwsSecretSource
from edge.secrets.keys import generate_key
from edge.secrets.seal_process import ChildStore
from edge.secrets.source import held_versions
from edge.secrets.store import STORE_FILE_NAME, SecretStore

SPEEDUP_TARGET = 10.0
ROTATION_SHARE_TARGET = 5.0


@dataclass
class Mode:
    """One way of fetching, with its timings and API calls."""

    key: str
    title: str
    settings: FetchSettings
    #: Straight to moto, bypassing the latency proxy.
    direct: bool = False
    seconds: list[float] = field(default_factory=list)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def median(self) -> float:
        """Return the median time."""
        return statistics.median(self.seconds)


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--secrets", type=int, default=300)
    parser.add_argument("--labels", type=int, default=3, help="labels per secret, AWSCURRENT too")
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="measure the calls incremental fetch saves (redeploy unchanged, 10%% rotated)",
    )
    parser.add_argument(
        "--inline-proxy",
        action="store_true",
        help="run the proxy in this process's event loop instead of its own process",
    )
    args = parser.parse_args()
    if args.secrets < 1 or args.labels < 1 or args.repeat < 1:
        parser.error("--secrets, --labels and --repeat must be at least 1")
    return args


def create_secrets(url: str, count: int, labels: int) -> list[SecretResource]:
    """Create the secrets in moto, each label on a version of its own; return the resources."""
    extra = tuple(f"Label{j}" for j in range(1, labels))
    client = boto3.client(
        "secretsmanager",
        region_name=TEST_REGION,
        endpoint_url=url,
        config=Config(max_pool_connections=8),
    )

    def create(i: int) -> SecretResource:
        # About the size of a real credential: a small JSON document.
        value = '{"username": "svc-%04d", "password": "%s"}'
        arn = client.create_secret(Name=f"bench/secret-{i:04d}", SecretString=value % (i, "c"))[
            "ARN"
        ]
        for label in extra:
            client.put_secret_value(
                SecretId=arn, SecretString=value % (i, label), VersionStages=[label]
            )
        return SecretResource(
            resource_id=f"res-{i:04d}", name=f"secret-{i:04d}", arn=arn, additional_labels=extra
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(create, range(count)))


@asynccontextmanager
async def latency_proxy(upstream: str, delay_ms: float, *, inline: bool) -> AsyncIterator[str]:
    """Run the latency proxy, by default in a process of its own; yield its URL.

    On a device the fetcher has its CPU to itself while the network and the service are
    elsewhere. Sharing this process's CPU with the proxy would slow the concurrent modes
    (which are partly CPU-bound on a small machine) more than the baseline.
    """
    if inline:
        async with LatencyProxy(upstream=upstream, delay=delay_ms / 1000) as proxy:
            yield proxy.url
        return
    script = Path(__file__).with_name("latency_proxy.py")
    argv = [sys.executable, str(script), "--upstream", upstream, "--delay-ms", str(delay_ms)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    try:
        line = await proc.stdout.readline() if proc.stdout else b""
        url = line.decode().strip()
        if not url.startswith("http://"):
            raise SystemExit("the latency proxy did not start")
        yield url
    finally:
        proc.terminate()
        await proc.wait()


async def time_fetches(
    urls: tuple[str, str], resources: list[SecretResource], modes: list[Mode], repeat: int
) -> dict[str, LocalSecret]:
    """Run every mode `repeat` times (interleaved), check they agree, return one result."""
    reference: dict[str, LocalSecret] | None = None
    for _ in range(repeat):
        for mode in modes:
            # A fresh source per run: a deployment after a quiet period opens its connections.
            url = urls[1] if mode.direct else urls[0]
            async with AwsSecretSource(
                region=TEST_REGION, endpoint_url=url, settings=mode.settings
            ) as source:
                started = time.perf_counter()
                result = await source.fetch(resources)
                mode.seconds.append(time.perf_counter() - started)
            mode.calls = source.calls
            if reference is None:
                reference = result
            elif result != reference:
                raise SystemExit(f"mode {mode.key} fetched something else than the others")
    if reference is None:
        raise SystemExit("nothing was fetched")
    return reference


async def time_rotation(
    contents: StoreContents, workdir: Path, repeat: int
) -> tuple[list[float], list[float]]:
    """Time the core's rotation (`ChildStore.asave`) and `SecretStore.save`, interleaved."""
    key_path = workdir / "core.key"
    key = generate_key(key_path, kind="ec")
    (workdir / "child").mkdir()
    child = ChildStore(path=workdir / "child" / STORE_FILE_NAME, key=key_path)
    await child.aload()  # no file yet: the child checks the key and hands back its public half
    store = SecretStore(path=workdir / STORE_FILE_NAME, key=key)
    in_child: list[float] = []
    in_process: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        await child.asave(contents)
        in_child.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.save(contents)
        in_process.append(time.perf_counter() - started)
    reopened = ChildStore(path=workdir / "child" / STORE_FILE_NAME, key=key_path)
    if store.load() != contents or await reopened.aload() != contents:
        raise SystemExit("the store did not give back what was saved")
    return in_child, in_process


def calls_text(calls: collections.Counter[str]) -> str:
    """Format API calls per operation."""
    return " + ".join(f"{n} {op}" for op, n in sorted(calls.items())) or "-"


def report(
    args: argparse.Namespace, modes: list[Mode], rotation: list[float], in_process: list[float]
) -> None:
    """Print the results as a markdown table and the ratios against the targets."""
    pairs = args.secrets * args.labels
    a, b, c, _floor = modes
    rot = statistics.median(rotation)
    print(
        f"\n{args.secrets} secrets x {args.labels} labels = {pairs} (ARN, label) pairs, "
        f"{args.latency_ms:g} ms added per call by a proxy "
        f"({'in this process' if args.inline_proxy else 'in its own process'}), "
        f"median of {args.repeat} runs; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| mode | median s | min s | API calls | vs (c) |")
    print("|---|---:|---:|---|---:|")
    for mode in modes:
        speedup = c.median / mode.median
        print(
            f"| {mode.title} | {mode.median:.3f} | {min(mode.seconds):.3f} "
            f"| {calls_text(mode.calls)} | {speedup:.1f}x |"
        )
    share = 100 * rot / (a.median + rot)
    print(
        f"| (d) store rotation (ChildStore.asave: sealed in the crypto child) | {rot:.3f} "
        f"| {min(rotation):.3f} | - | {share:.1f}% of (a)+(d) |"
    )
    print(
        f"| (d0) the same sealed in this process (SecretStore.save) "
        f"| {statistics.median(in_process):.3f} | {min(in_process):.3f} | - | - |"
    )
    print()
    for mode in (a, b):
        speedup = c.median / mode.median
        verdict = "ok" if speedup >= SPEEDUP_TARGET else "BELOW TARGET"
        print(
            f"speedup {mode.key} vs (c): {speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x) {verdict}"
        )
    verdict = "ok" if share < ROTATION_SHARE_TARGET else "ABOVE TARGET"
    print(
        f"rotation share of a deployment (d)/((a)+(d)): {share:.1f}% "
        f"(target < {ROTATION_SHARE_TARGET:g}%) {verdict}"
    )


async def run(
    args: argparse.Namespace, moto_url: str, resources: list[SecretResource], workdir: Path
) -> None:
    """Time every mode and the rotation, print the report."""
    conc = args.concurrency
    modes = [
        Mode("(a)", f"(a) concurrency {conc}, batch", FetchSettings(concurrency=conc)),
        Mode(
            "(b)",
            f"(b) concurrency {conc}, no batch",
            FetchSettings(concurrency=conc, use_batch=False),
        ),
        Mode(
            "(c)",
            "(c) one by one (baseline)",
            FetchSettings(concurrency=1, use_batch=False, deadline_seconds=3600),
        ),
        # Not a target: how fast moto itself serves (b)'s calls with no added latency. When
        # (b) comes close to it, the emulator's CPU, not the fetcher, bounds (a) and (b).
        Mode(
            "(b0)",
            "(b0) as (b), straight to moto: the emulator's floor",
            FetchSettings(concurrency=conc, use_batch=False),
            direct=True,
        ),
    ]
    async with latency_proxy(moto_url, args.latency_ms, inline=args.inline_proxy) as url:
        fetched = await time_fetches((url, moto_url), resources, modes, args.repeat)
    rotation, in_process = await time_rotation(StoreContents(secrets=fetched), workdir, args.repeat)
    report(args, modes, rotation, in_process)


def rotate_some(url: str, resources: list[SecretResource], share: float) -> int:
    """Give the first `share` of the secrets a new AWSCURRENT version; return how many."""
    client = boto3.client("secretsmanager", region_name=TEST_REGION, endpoint_url=url)
    count = max(1, round(len(resources) * share))
    for i, resource in enumerate(resources[:count]):
        client.put_secret_value(
            SecretId=resource.arn, SecretString=f'{{"username": "svc-{i:04d}", "password": "r"}}'
        )
    return count


async def timed_fetch(
    url: str, resources: list[SecretResource], *, concurrency: int, held: StoreContents | None
) -> tuple[float, collections.Counter[str], dict[str, LocalSecret]]:
    """One fetch by a fresh source: seconds, calls by operation, result."""
    async with AwsSecretSource(
        region=TEST_REGION, endpoint_url=url, settings=FetchSettings(concurrency=concurrency)
    ) as source:
        started = time.perf_counter()
        result = await source.fetch(resources, held=held_versions(held) if held else None)
        return time.perf_counter() - started, source.calls, result


async def run_incremental(
    args: argparse.Namespace, moto_url: str, resources: list[SecretResource]
) -> None:
    """Redeploy unchanged, then after 10% rotated: full fetch vs incremental, calls and time."""
    conc = args.concurrency
    rows: list[tuple[str, list[float], collections.Counter[str]]] = []
    async with latency_proxy(moto_url, args.latency_ms, inline=args.inline_proxy) as url:
        _, _, first = await timed_fetch(url, resources, concurrency=conc, held=None)
        held = StoreContents(secrets=first)
        scenarios: list[tuple[str, StoreContents | None]] = [
            ("unchanged, full fetch (before)", None),
            ("unchanged, incremental (after)", held),
        ]
        for title, base in scenarios:
            seconds: list[float] = []
            for _ in range(args.repeat):
                took, calls, result = await timed_fetch(url, resources, concurrency=conc, held=base)
                if result != first:
                    raise SystemExit(f"{title}: fetched something else than the first fetch")
                seconds.append(took)
            rows.append((title, seconds, calls))
        rotated = rotate_some(moto_url, resources, 0.10)
        for title, base in (
            (f"{rotated} of {len(resources)} rotated, full fetch (before)", None),
            (f"{rotated} of {len(resources)} rotated, incremental (after)", held),
        ):
            seconds = []
            for _ in range(args.repeat):
                took, calls, _result = await timed_fetch(
                    url, resources, concurrency=conc, held=base
                )
                seconds.append(took)
            rows.append((title, seconds, calls))
    print(
        f"\n{args.secrets} secrets x {args.labels} labels, {args.latency_ms:g} ms added per call, "
        f"concurrency {conc}, batch on, median of {args.repeat} runs; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs\n"
    )
    print("| redeploy | median s | API calls | GetSecretValue + Batch calls |")
    print("|---|---:|---|---:|")
    for title, seconds, calls in rows:
        values = calls["GetSecretValue"] + calls["BatchGetSecretValue"]
        print(f"| {title} | {statistics.median(seconds):.3f} | {calls_text(calls)} | {values} |")


def main() -> None:
    """Start moto, run the benchmark, stop moto."""
    args = parse_args()
    # Per-fetch info events would drown the table; warnings (a batch refusal) still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.environ.update(AWS_TEST_ENV)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        workdir = Path(tmp)
        with run_moto(workdir / "moto.log") as moto:
            started = time.perf_counter()
            resources = create_secrets(moto.url, args.secrets, args.labels)
            print(f"created {len(resources)} secrets in {time.perf_counter() - started:.1f} s")
            if args.incremental:
                asyncio.run(run_incremental(args, moto.url, resources))
            else:
                asyncio.run(run(args, moto.url, resources, workdir))


if __name__ == "__main__":
    main()
