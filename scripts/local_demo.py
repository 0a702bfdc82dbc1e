"""`make demo` until `edge demo` lands: a real core against a local Mosquitto and moto.

Starts Mosquitto and moto's Secrets Manager on free loopback ports, initialises a core in a
throwaway directory, deploys the reference document's secret resource (with two extra staging
labels) plus a binary secret, lists the store, rotates the secret, redeploys, and cleans up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3

from tests.support.core import CoreProcess, Operator, edge_cli, secret_resource, write_config
from tests.support.services import AWS_TEST_ENV, TEST_REGION, run_mosquitto, run_moto


def step(text: str) -> None:
    """Print a numbered demo step."""
    step.n = getattr(step, "n", 0) + 1  # type: ignore[attr-defined]
    print(f"\n\033[1m[{step.n}] {text}\033[0m", flush=True)  # type: ignore[attr-defined]


def show_status(doc: dict[str, Any]) -> None:
    """Print one status document."""
    print("    status:", json.dumps(doc))


def main() -> int:
    """Run the demo; return the exit status."""
    # moto accepts any credentials; never use a developer's real ones against it.
    os.environ.update(AWS_TEST_ENV)
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as tmp:
        root = Path(tmp)
        step("Starting Mosquitto and moto's Secrets Manager on free loopback ports")
        with run_mosquitto(root / "mosquitto") as broker, run_moto(root / "moto.log") as moto:
            print(f"    broker {broker.url}, Secrets Manager {moto.url}")
            sm = boto3.client("secretsmanager", region_name=TEST_REGION, endpoint_url=moto.url)

            step("Creating secret greengrass-SomeSecret with labels AWSCURRENT, Label1, Label2")
            created = sm.create_secret(Name="greengrass-SomeSecret", SecretString="demo-value-v1")
            arn = created["ARN"]
            sm.put_secret_value(SecretId=arn, SecretString="demo-label-1", VersionStages=["Label1"])
            sm.put_secret_value(SecretId=arn, SecretString="demo-label-2", VersionStages=["Label2"])
            cert = sm.create_secret(Name="greengrass-DeviceCert", SecretBinary=b"\x00\x01cert")
            print(f"    {arn}")

            thing = f"demo-core-{uuid.uuid4().hex[:6]}"
            config = write_config(
                root / "core.toml", thing_name=thing, mqtt_url=broker.url, endpoint_url=moto.url
            )
            step(f"edge init --config {config}")
            print(
                "   ",
                edge_cli("init", "--config", str(config)).stdout.strip().replace("\n", "\n    "),
            )

            step("edge run --config core.toml (in the background; its log goes to core.log)")
            core = CoreProcess(config=config, log_path=root / "core.log")
            core.start()
            core.wait_for_event("mqtt.connected")
            operator = Operator(port=broker.port, prefix="edge", thing=thing)
            operator.connect()
            try:
                resources = [
                    secret_resource("my-resource-id", arn, ["Label1", "Label2"]),
                    secret_resource("device-cert", cert["ARN"]),
                ]
                step(f"Publishing a NewDeployment to {operator.deployments_topic}")
                started = time.perf_counter()
                dep = operator.deploy(resources)
                show_status(operator.wait_status(dep, "InProgress"))
                show_status(operator.final_status(dep))
                print(f"    deployed in {time.perf_counter() - started:.2f} s")

                step("edge secrets list (ids, labels and versions; never values)")
                print(edge_cli("secrets", "list", "--config", str(config)).stdout)

                step("Rotating the secret in Secrets Manager and redeploying")
                sm.put_secret_value(SecretId=arn, SecretString="demo-value-v2")
                dep2 = operator.deploy(resources, deployment_type="Redeployment")
                show_status(operator.final_status(dep2))
                print(edge_cli("secrets", "list", "--config", str(config)).stdout)

                step("Deleting the secret and redeploying: Failure, and the store is unchanged")
                sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
                dep3 = operator.deploy(resources)
                show_status(operator.final_status(dep3))
            finally:
                operator.close()
                code = core.stop()
            step(f"Stopped the core (exit status {code}); cleaning up")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (subprocess.SubprocessError, AssertionError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
