"""The manual quick start (docs/operations.md, "Quick start by hand") deploys as written.

Its first block installs and starts the services: here Mosquitto and moto are the tests' own,
on free loopback ports. Its second block, the steps, is run verbatim by bash in a directory
holding the two example configs, with only these substituted: the ports 1883 and 5000 (in the
block and in the example configs) by the test's, and `.venv/bin/` by this interpreter's
directory. The steps must end with the signed deployment's `Success`, which the broker keeps
as the core's retained status.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.fixtures.services import AWS_TEST_ENV, Mosquitto, MotoServer

pytestmark = pytest.mark.network

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"
BIN = Path(sys.executable).parent
#: The example configs' broker and Secrets Manager, as the quick start starts them.
BROKER_ADDRESS = "127.0.0.1:1883"
MOTO_ADDRESS = "127.0.0.1:5000"
THING = "edge-core-1"
#: Every step, the core's start and the deployment included, well within this.
STEPS_TIMEOUT_SECONDS = 240


def quick_start_blocks() -> list[str]:
    """The ```sh blocks of the "Quick start by hand" section, in order."""
    section = OPERATIONS.read_text().split("\n## Quick start by hand\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)


def test_the_quick_start_starts_the_services_it_then_uses() -> None:
    """The first block starts a broker and moto on the ports the example configs name."""
    services, steps = quick_start_blocks()
    assert "mosquitto -d" in services
    assert "moto_server -p 5000" in services
    for example in ("config.example.toml", "cloud.example.toml"):
        text = (REPO / example).read_text()
        assert f'url = "mqtt://{BROKER_ADDRESS}"' in text, example
        assert f'endpoint_url = "http://{MOTO_ADDRESS}"' in text, example
    assert f"http://{MOTO_ADDRESS}" in steps


def test_the_quick_start_steps_deploy_a_secret_as_written(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer
) -> None:
    """Run the steps verbatim: the deployment ends in Success, retained on the status topic."""
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    missing = [tool for tool in ("aws", "jq", "mosquitto_sub") if not shutil.which(tool, path=path)]
    assert not missing, f"the quick start needs {', '.join(missing)}: bash .ci/install-tools"
    _, steps = quick_start_blocks()
    ports = {
        BROKER_ADDRESS: f"127.0.0.1:{broker.port}",
        MOTO_ADDRESS: moto.url.removeprefix("http://"),
    }
    work = tmp_path / "qs"  # short: the core's socket path has at most 107 bytes
    work.mkdir()
    for example in ("config.example.toml", "cloud.example.toml"):
        (work / example).write_text(_substitute((REPO / example).read_text(), ports))
    script = _substitute(steps, ports).replace(".venv/bin/", f"{BIN}/")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "PATH": path,
        "HOME": str(work),  # no ~/.aws of this machine
        "AWS_DEFAULT_REGION": AWS_TEST_ENV.get("AWS_DEFAULT_REGION", "us-east-1"),
    }
    steps_run = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the core it backgrounds is in this group: stopped below
    )
    try:
        out, err = steps_run.communicate(timeout=STEPS_TIMEOUT_SECONDS)
    finally:
        _stop_group(steps_run.pid)
    log = (work / "core.log").read_text() if (work / "core.log").exists() else ""
    assert steps_run.returncode == 0, f"{out}\n{err}\n{log}"
    # `create-deployment --wait` follows the deployment on stderr, to its final status.
    assert re.search(r"^edge: deployment \S+: Success at ", err, re.MULTILINE), err
    assert "quickstart-db" in out  # `edge secrets list`
    assert "correct horse" not in out + err + log

    status = subprocess.run(
        [
            "mosquitto_sub",
            "-p",
            str(broker.port),
            "-h",
            "127.0.0.1",
            "-t",
            f"edge/things/{THING}/deployments/status",
            "-C",
            "1",
            "-W",
            "10",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["DeploymentStatus"] == "Success"
    assert "deploy.complete" in log
    assert "deploy.signature_rejected" not in log


def _substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def _stop_group(pgid: int) -> None:
    """SIGTERM what the steps left running (their own process group), SIGKILL if it stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 5
        try:
            os.killpg(pgid, sig)
            while time.monotonic() < deadline:
                os.killpg(pgid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            return
