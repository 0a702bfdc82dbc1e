# SPDX-License-Identifier: Apache-2.0
"""The control plane: `edge cloud serve` (one replica), its config and an operator's client."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fleetbench.constants import ACCOUNT, BENCH_DIR, KEY_ID, PREFIX, REGION, REPO
from bench.fleetbench.procfs import die_with_parent


@dataclass
class ControlPlane:
    """`edge cloud serve` and a boto3 Greengrass client signed with its operator key."""

    root: Path
    config: Path
    url: str
    secret: str
    proc: subprocess.Popen[bytes] | None = None
    #: Another checkout whose `edge cloud serve` runs instead of this one's (a baseline).
    serve_from: Path | None = None
    #: Where `serve` writes its CPU split (bench/profile_serve.py), if measured.
    profile: Path | None = None
    #: With `profile`: a cProfile of every thread too.
    cprofile: bool = False

    def cli(self, *args: str) -> str:
        """Run an `edge cloud` command; return its stdout, or fail with its stderr."""
        from edge.fixtures.core import edge_cli  # noqa: PLC0415

        result = edge_cli("cloud", "--config", str(self.config), *args)
        if result.returncode != 0:
            raise RuntimeError(f"edge cloud {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        """Start `edge cloud serve` and wait until /health says it is connected."""
        from edge.fixtures.services import AWS_TEST_ENV  # noqa: PLC0415

        with (self.root / "serve.log").open("ab") as log:
            launcher = (
                (sys.executable, "-m", "edge")
                if self.profile is None
                else (
                    *(sys.executable, str(BENCH_DIR / "profile_serve.py"), str(self.profile)),
                    *(["--cprofile"] if self.cprofile else []),
                    "--",
                )
            )
            self.proc = subprocess.Popen(
                [
                    *launcher,
                    *("--log-format", "json", "cloud"),
                    *("--config", str(self.config), "serve"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **AWS_TEST_ENV, **self._source_env()},
                cwd=self.serve_from or REPO,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads run yet
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/health", timeout=2) as answer,  # noqa: S310
            ):
                if json.loads(answer.read()).get("Mqtt") == "connected":
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"edge cloud serve did not start; see {self.root / 'serve.log'}")

    def profile_signal(self, sig: int) -> None:
        """Start (SIGUSR1) or write out (SIGUSR2) the profile of `serve`, if it is profiled."""
        if self.profile is not None and self.proc is not None:
            self.proc.send_signal(sig)

    def _source_env(self) -> dict[str, str]:
        if self.serve_from is None:
            return {}
        return {"PYTHONPATH": str(self.serve_from.resolve())}

    def stop(self) -> None:
        """SIGTERM the service and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def client(self, pool: int) -> Any:
        """A boto3 Greengrass client for the service, with `pool` connections."""
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        return boto3.client(
            "greengrass",
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=self.secret,
            config=Config(max_pool_connections=pool, retries={"mode": "standard"}),
        )


def write_cloud_config(
    root: Path,
    *,
    mqtt_url: str,
    moto_url: str,
    port: int,
    publish_rate: float | None = None,
    database: str = "cloud/edge-cloud.db",
    shared_group: str | None = None,
    name: str = "cloud.toml",
) -> Path:
    """The control plane's config: its database, key, S3 bucket, API port and operator key."""
    secret_file = root / "operator.secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(30) + "\n")
        secret_file.chmod(0o600)
    path = root / name
    path.write_text(
        f'[cloud]\ndatabase = "{database}"\nsigning_key = "cloud/signing.pem"\n'
        f'artifact_bucket = "edge-artifacts"\naccount_id = "{ACCOUNT}"\n'
        f'listen = "127.0.0.1:{port}"\n\n[cloud.auth]\n'
        f'keys = [{{access_key_id = "{KEY_ID}", secret_access_key_file = "operator.secret"}}]\n\n'
        f'[mqtt]\nurl = "{mqtt_url}"\ntopic_prefix = "{PREFIX}"\nreconnect_max_seconds = 1.0\n'
        + ("" if publish_rate is None else f"publish_rate = {publish_rate}\n")
        + ("" if shared_group is None else f'shared_subscription_group = "{shared_group}"\n')
        + "\n"
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{moto_url}"\n'
    )
    return path
