# SPDX-License-Identifier: Apache-2.0
"""What fetching in a child process costs a deployment: wall time per fetch, in and out.

Starts moto's server (edge/fixtures/services.py) with `--secrets` secrets, then times, in the
same run and interleaved (baseline, child, baseline, ...), `--repeat` fetches of all of them:

* **baseline**: `AwsSecretSource` in this process, its client already open (as a core that
  keeps the AWS SDK loaded holds it between deployments);
* child: `ProcessSecretSource`, which starts `python -m edge.secrets.fetcher` for the fetch.

Each kind twice: a full fetch (BatchGetSecretValue), and a redeploy of what is held
(DescribeSecret only). Reports medians and the child's extra time. Run:

    .venv/bin/python bench/fetch_process.py [--secrets 100] [--repeat 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION, run_moto  # noqa: E402
from edge.model import SecretResource  # noqa: E402
from edge.secrets.contents import StoreContents  # noqa: E402
from edge.secrets.fetch import AwsSecretSource  # noqa: E402
from edge.secrets.fetch_process import AwsTarget, ProcessSecretSource  # noqa: E402
from edge.secrets.source import held_versions  # noqa: E402


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return (time.perf_counter() - started) * 1000


async def measure(url: str, resources: list[SecretResource], repeat: int) -> dict[str, list[float]]:
    child = ProcessSecretSource(AwsTarget(region=TEST_REGION, endpoint_url=url))
    out: dict[str, list[float]] = {}
    async with AwsSecretSource(region=TEST_REGION, endpoint_url=url) as inproc:
        fetched = await inproc.fetch(resources)  # warm: connections open, models loaded
        held = held_versions(StoreContents(deployment=None, group={}, secrets=fetched))
        for _ in range(repeat):
            for name, source in (("baseline", inproc), ("child", child)):
                full = await timed(lambda s=source: s.fetch(resources))
                again = await timed(lambda s=source: s.fetch(resources, held=held))
                out.setdefault(f"{name} full", []).append(full)
                out.setdefault(f"{name} held", []).append(again)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--secrets", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    os.environ.update(AWS_TEST_ENV)
    with tempfile.TemporaryDirectory() as tmp, run_moto(Path(tmp) / "moto.log") as moto:
        sm = moto.client()
        resources = []
        for i in range(args.secrets):
            arn = sm.create_secret(Name=f"bench/s{i}", SecretString=f"value-{i}")["ARN"]
            resources.append(SecretResource(resource_id=f"s{i}", name=f"s{i}", arn=arn))
        times = asyncio.run(measure(moto.url, resources, args.repeat))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.secrets} secrets, median of {args.repeat}, ms")
    for kind in ("full", "held"):
        base, child = median[f"baseline {kind}"], median[f"child {kind}"]
        print(
            f"{kind}: baseline {base:.0f}  child {child:.0f}  "
            f"extra {child - base:.0f}  ratio {child / base:.2f}"
        )


if __name__ == "__main__":
    main()
