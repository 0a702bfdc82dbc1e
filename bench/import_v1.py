# SPDX-License-Identifier: Apache-2.0
"""Time `edge cloud import-greengrass` on a synthetic Greengrass V1 account, count its requests.

Starts moto's server (`edge.fixtures.moto_greengrass`: moto with AWS's form of Greengrass
ARNs), builds `--groups` groups of `--versions` group versions each with boto3, every group
with its own core, resource (secrets), function (with ResourceAccessPolicies) and subscription
definitions; the resource and function definitions get a new version for every group version.
A counting proxy (`latency_proxy.py`, adding `--latency-ms` to every request: the round trip to
a region) sits in front of moto. Then, `--repeat` times each, it times the real CLI:

  import   into an empty database
  again    the same import once more: reads everything, writes nothing ("nothing new")

and prints the medians as a markdown table with the requests each made (as the command reports
them, and as the proxy counted them). Run:
`.venv/bin/python bench/import_v1.py [--groups 200 --versions 3 --repeat 3 --latency-ms 0]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3

from bench.latency_proxy import LatencyProxy
from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION, run_moto

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
_REQUESTS = re.compile(r"(\d+) Greengrass API requests")


def build_account(url: str, groups: int, versions: int) -> int:
    """Create the synthetic account; return how many group versions it has."""
    gg = boto3.client("greengrass", region_name=TEST_REGION, endpoint_url=url)
    total = 0
    for g in range(groups):
        thing = f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/core-{g}"
        core = gg.create_core_definition(
            Name=f"core-{g}",
            InitialVersion={
                "Cores": [
                    {
                        "Id": "core",
                        "ThingArn": thing,
                        "CertificateArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:cert/c{g}",
                        "SyncShadow": False,
                    }
                ]
            },
        )["LatestVersionArn"]
        fn = f"arn:aws:lambda:{TEST_REGION}:{ACCOUNT}:function:fn-{g}:1"
        subs = gg.create_subscription_definition(
            Name=f"subs-{g}",
            InitialVersion={
                "Subscriptions": [{"Id": "in", "Source": "cloud", "Target": fn, "Subject": "in"}]
            },
        )["LatestVersionArn"]
        res_id = fns_id = None
        for v in range(versions):
            resources = [
                {
                    "Id": f"Secret{i}",
                    "Name": f"Secret{i}",
                    "ResourceDataContainer": {
                        "SecretsManagerSecretResourceData": {
                            "ARN": f"arn:aws:secretsmanager:{TEST_REGION}:{ACCOUNT}:secret:"
                            f"g{g}-s{i}-AbCdEf"
                        }
                    },
                }
                for i in range(v + 1)
            ]
            functions = [
                {
                    "Id": "fn",
                    "FunctionArn": fn,
                    "FunctionConfiguration": {
                        "Executable": "app.handler",
                        "MemorySize": 16384,
                        "Timeout": 10,
                        "Environment": {
                            "ResourceAccessPolicies": [
                                {"ResourceId": r["Id"], "Permission": "ro"} for r in resources
                            ]
                        },
                    },
                }
            ]
            if res_id is None:
                created = gg.create_resource_definition(
                    Name=f"res-{g}", InitialVersion={"Resources": resources}
                )
                res_id, res = created["Id"], created["LatestVersionArn"]
                created = gg.create_function_definition(
                    Name=f"fns-{g}", InitialVersion={"Functions": functions}
                )
                fns_id, fns = created["Id"], created["LatestVersionArn"]
            else:
                res = gg.create_resource_definition_version(
                    ResourceDefinitionId=res_id, Resources=resources
                )["Arn"]
                fns = gg.create_function_definition_version(
                    FunctionDefinitionId=fns_id, Functions=functions
                )["Arn"]
            refs: dict[str, Any] = {
                "CoreDefinitionVersionArn": core,
                "ResourceDefinitionVersionArn": res,
                "FunctionDefinitionVersionArn": fns,
                "SubscriptionDefinitionVersionArn": subs,
            }
            if v == 0:
                group_id = gg.create_group(Name=f"group-{g}", InitialVersion=refs)["Id"]
            else:
                gg.create_group_version(GroupId=group_id, **refs)
            total += 1
    return total


async def run_import(config: Path) -> tuple[float, int, str]:
    """Run the CLI once; return (seconds, requests it reported, its stdout)."""
    env = {**os.environ, **AWS_TEST_ENV}
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "edge", "cloud", "--config", str(config), "import-greengrass"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    out, err = await proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"import failed ({proc.returncode}): {err.decode()[-2000:]}")
    text = out.decode()
    match = _REQUESTS.search(text)
    return elapsed, int(match[1]) if match else -1, text


async def measure(args: argparse.Namespace, moto_url: str, root: Path) -> None:
    """Time the first import and the re-import, `--repeat` times each, interleaved."""
    async with LatencyProxy(upstream=moto_url, delay=args.latency_ms / 1000) as proxy:
        times: dict[str, list[float]] = {"import": [], "again": []}
        requests: dict[str, tuple[int, int]] = {}
        for run in range(args.repeat):
            config = root / f"run{run}" / "cloud.toml"
            config.parent.mkdir()
            config.write_text(
                '[cloud]\ndatabase = "edge-cloud.db"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
                f'[aws]\nregion = "{TEST_REGION}"\nendpoint_url = "{proxy.url}"\n'
            )
            for mode in ("import", "again"):
                proxy.reset_counts()
                elapsed, reported, text = await run_import(config)
                if mode == "again" and "nothing new" not in text:
                    raise SystemExit("the second import copied something")
                times[mode].append(elapsed)
                requests[mode] = (reported, sum(proxy.requests.values()))
    print(f"| mode | median of {args.repeat} (s) | requests (reported / counted) |")
    print("|---|---|---|")
    for mode, values in times.items():
        reported, counted = requests[mode]
        print(f"| {mode} | {statistics.median(values):.2f} | {reported} / {counted} |")


def main() -> None:
    """Parse arguments, build the account, measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--versions", type=int, default=3, help="group versions per group")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    args = parser.parse_args()
    os.environ.update(AWS_TEST_ENV)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        root = Path(tmp)
        with run_moto(root / "moto.log", module="edge.fixtures.moto_greengrass") as moto:
            started = time.perf_counter()
            versions = build_account(moto.url, args.groups, args.versions)
            print(
                f"{args.groups} groups, {versions} group versions, "
                f"{args.groups * (2 + 2 * args.versions)} definition versions built in "
                f"{time.perf_counter() - started:.1f} s; latency {args.latency_ms:g} ms; "
                f"{platform.python_implementation()} {platform.python_version()}, "
                f"{os.cpu_count()} CPUs"
            )
            asyncio.run(measure(args, moto.url, root))


if __name__ == "__main__":
    main()
