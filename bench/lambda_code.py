# SPDX-License-Identifier: Apache-2.0
"""Time create-deployment for a function whose code is in AWS Lambda, against a published one.

Starts Mosquitto and moto's server, creates a function in moto's Lambda with a package of
`--size-mib` (an incompressible file beside app.py), publishes version 1 and an alias on it,
and puts `bench/lambda_proxy.py` (adding `--latency-ms` to every request: the round
trip to a region) in front of moto, serving the package at GetFunction's Code.Location. Then it
times `edge.cloud.deployments.create_deployment` (no core: until the broker has the document),
`--repeat` times each, for a group whose one function is named by:

  published  a package `publish-function` stored (no Lambda call)
  version    a version ARN: fetched and stored the first time (`first`), kept afterwards
  alias      an alias ARN: GetFunction, download and digest at every deployment

and prints the medians as a markdown table. Run:
`.venv/bin/python bench/lambda_code.py [--size-mib 20 --latency-ms 30 --repeat 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3

from bench.lambda_proxy import lambda_proxy
from edge.cloud import definitions, groups
from edge.cloud.artifacts import publish_function
from edge.cloud.config import load_cloud_config
from edge.cloud.db import Database
from edge.cloud.definitions import KINDS
from edge.cloud.deployments import Request, create_deployment
from edge.cloud.ids import Arns
from edge.cloud.keys import init_signing_key
from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION, run_mosquitto, run_moto
from edge.signing import load_signing_key

ACCOUNT = "123456789012"
HANDLER = "def function_handler(event, context):\n    return event\n"


def package(size_mib: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", HANDLER)
        archive.writestr("blob.bin", os.urandom(size_mib * 1024 * 1024))
    return buffer.getvalue()


def create_lambda(url: str, code: bytes) -> tuple[str, str]:
    iam = boto3.client("iam", region_name=TEST_REGION, endpoint_url=url)
    policy = {"Version": "2012-10-17", "Statement": []}
    role = iam.create_role(RoleName="bench", AssumeRolePolicyDocument=json.dumps(policy))
    client = boto3.client("lambda", region_name=TEST_REGION, endpoint_url=url)
    client.create_function(
        FunctionName="bench",
        Runtime="python3.11",
        Role=role["Role"]["Arn"],
        Handler="app.function_handler",
        Code={"ZipFile": code},
    )
    version = client.publish_version(FunctionName="bench")
    alias = client.create_alias(FunctionName="bench", Name="live", FunctionVersion="1")
    return version["FunctionArn"], alias["AliasArn"]


def group_of(db: Database, arns: Arns, function_arn: str) -> str:
    core = {
        "Cores": [
            {
                "Id": "core",
                "ThingArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/bench-core",
                "CertificateArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:cert/abc",
            }
        ]
    }
    functions = {"Functions": [{"Id": "fn", "FunctionArn": function_arn}]}
    refs = {}
    for noun, body in (("core", core), ("function", functions)):
        kind = KINDS[noun]
        created = definitions.create_definition(db, arns, kind, name=noun, initial=body)
        refs[kind.group_key] = created["LatestVersionArn"]
    return str(groups.create_group(db, arns, name="bench", initial=refs)["Id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(AWS_TEST_ENV)
    code = package(args.size_mib)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with run_mosquitto(root / "broker") as broker, run_moto(root / "moto.log") as moto:
            version_arn, alias_arn = create_lambda(moto.url, code)
            with lambda_proxy(moto.url) as proxy:
                proxy.add(code)
                proxy.delay = args.latency_ms / 1000
                rows = asyncio.run(
                    measure(root, broker.url, proxy.url, code, version_arn, alias_arn, args.repeat)
                )
    print(
        f"package {len(code) / 2**20:.1f} MiB, {args.latency_ms:g} ms per request, "
        f"median of {args.repeat}\n"
    )
    print("| function named by | create-deployment (ms) |")
    print("| --- | ---: |")
    for name, ms in rows:
        print(f"| {name} | {ms:.0f} |")


async def measure(  # noqa: PLR0917 - one call, from main
    root: Path,
    broker: str,
    endpoint: str,
    code: bytes,
    version_arn: str,
    alias_arn: str,
    repeat: int,
) -> list[tuple[str, float]]:
    config_path = root / "cloud.toml"
    config_path.write_text(
        f'[cloud]\nartifact_bucket = "bench-artifacts"\n[mqtt]\nurl = "{broker}"\n'
        f'[aws]\nregion = "{TEST_REGION}"\nendpoint_url = "{endpoint}"\n'
    )
    config = load_cloud_config(config_path)
    init_signing_key(config.cloud.signing_key, config.cloud.public_key)
    key = load_signing_key(config.cloud.signing_key)
    arns = Arns(TEST_REGION, ACCOUNT)
    published_arn = f"arn:aws:lambda:{TEST_REGION}:{ACCOUNT}:function:published:1"
    with Database.open(config.cloud.database) as db:
        await publish_function(
            config, db, function_arn=published_arn, handler="app.function_handler", package=code
        )

        async def once(group_id: str) -> float:
            start = time.perf_counter()
            await create_deployment(config, db, key, Request(group_id, "NewDeployment"))
            return (time.perf_counter() - start) * 1000

        rows: list[tuple[str, float]] = []
        version_group = group_of(db, arns, version_arn)
        rows.append(("version, first (fetched)", await once(version_group)))
        for name, arn in (
            ("published", published_arn),
            ("version, kept", version_arn),
            ("alias (fetched each time)", alias_arn),
        ):
            group_id = version_group if arn == version_arn else group_of(db, arns, arn)
            times = [await once(group_id) for _ in range(repeat)]
            rows.append((name, statistics.median(times)))
    return rows


if __name__ == "__main__":
    main()
