# SPDX-License-Identifier: Apache-2.0
"""The core's memory and disk while oversized payloads arrive on its deployments topic.

    .venv/bin/python bench/intake.py [--count 6] [--mb 100] [--keep]

One Mosquitto and one moto server (edge/fixtures/services.py) and a real `python -m edge run`
with JSON logs. `--count` payloads of `--mb` MB each are published at QoS 1 on the core's
deployments topic by `mosquitto_pub` (a process of its own, so the publisher's copies are not
in the figures), one after another. The core's VmRSS is read from /proc before the first, every
20 ms until the core has logged a drop for each of them ("during": the peak), and 2 s after the
last ("after"). Also reported: bytes the core wrote to disk meanwhile (/proc/PID/io
write_bytes; the inbox is the only place a payload could go), files in the inbox, and how long
a valid deployment published right after takes to reach Success.

Each payload is far above the packet limit (`edge.mqtt.limit.MAX_PACKET_BYTES`), so the core's
MQTT link reads it past in 64 KiB chunks; a core without that limit buffers each one whole in
paho-mqtt, then writes it to the inbox with fsync before any check.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.fixtures.core import CoreProcess, Operator, edge_cli, secret_resource
from edge.fixtures.procfs import vm_rss_kib
from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION, run_mosquitto, run_moto

THING = "intake-core"
#: How long to wait for the core to log the drop of every payload.
DROP_TIMEOUT_SECONDS = 300.0
#: The "after" reading is taken this long after the last drop, once the core is idle again.
SETTLE_SECONDS = 2.0


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=6, help="oversized payloads (default 6)")
    parser.add_argument("--mb", type=int, default=100, help="size of each, in MB (default 100)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    return parser.parse_args()


def write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage so far."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes for pid {pid}")


class Sampler:
    """Reads a process's VmRSS every 20 ms in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, vm_rss_kib(self._pid) / 1024)


def drops(core: CoreProcess) -> int:
    """Oversized payloads the core has dropped so far (a core without the checks: rejected)."""
    events = (
        "mqtt.packet_too_large",
        "deploy.payload_too_large",
        "deploy.signature_rejected",
        "deploy.rejected",
    )
    return sum(core.count(name) for name in events)


def write_core_config(path: Path, mqtt_url: str, endpoint_url: str) -> Path:
    """A core config with only the keys every version of the core knows, at info level."""
    path.write_text(
        f'[core]\nthing_name = "{THING}"\nstate_dir = "state"\n\n'
        f'[mqtt]\nurl = "{mqtt_url}"\n\n'
        f'[aws]\nregion = "{TEST_REGION}"\nendpoint_url = "{endpoint_url}"\n\n'
        '[log]\nlevel = "info"\nformat = "json"\n\n'
        "[deployments]\nallow_unsigned = true\n"
    )
    path.chmod(0o600)
    return path


def run(args: argparse.Namespace, root: Path) -> None:
    """Start the world, send the payloads, print the figures."""
    with run_mosquitto(root / "mosquitto") as broker, run_moto(root / "moto.log") as moto:
        config = write_core_config(root / "core.toml", broker.url, moto.url)
        if edge_cli("init", "--config", str(config)).returncode != 0:
            raise RuntimeError("edge init failed")
        core = CoreProcess(config=config, log_path=root / "core.log")
        core.start()
        if core.proc is None:
            raise RuntimeError("the core did not start")
        pid = core.proc.pid
        try:
            core.wait_for_event("mqtt.connected", timeout=30)
            operator = Operator(port=broker.port, prefix="edge", thing=THING)
            operator.connect()
            payload = root / "payload"
            with payload.open("wb") as out:
                out.truncate(args.mb * 1024 * 1024)  # sparse: zeros cost no disk here
            time.sleep(SETTLE_SECONDS)
            before, written = vm_rss_kib(pid) / 1024, write_bytes(pid)
            topic = operator.deployments_topic
            started = time.monotonic()
            with Sampler(pid) as sampler:
                for _ in range(args.count):
                    port, file = str(broker.port), str(payload)
                    subprocess.run(
                        ["mosquitto_pub", "-p", port, "-q", "1", "-t", topic, "-f", file],
                        check=True,
                        timeout=120,
                    )
                deadline = time.monotonic() + DROP_TIMEOUT_SECONDS
                while drops(core) < args.count and time.monotonic() < deadline:
                    time.sleep(0.05)
                elapsed = time.monotonic() - started
                time.sleep(SETTLE_SECONDS)
            after = vm_rss_kib(pid) / 1024
            disk = write_bytes(pid) - written
            inbox = len(list((root / "state" / "inbox").iterdir()))
            import boto3  # noqa: PLC0415 - only for the closing deployment

            sm = boto3.client(
                "secretsmanager",
                region_name=TEST_REGION,
                endpoint_url=moto.url,
                aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
            )
            arn = sm.create_secret(Name=f"after-{uuid.uuid4().hex[:6]}", SecretString="x")["ARN"]
            deployed = time.monotonic()
            dep = operator.deploy([secret_resource("a", arn)])
            operator.wait_status(dep, "Success", timeout=60)
            deploy_ms = (time.monotonic() - deployed) * 1000
            operator.close()
        finally:
            core.stop()
    print(f"{args.count} payloads of {args.mb} MB on the deployments topic, QoS 1")
    print("| core VmRSS before | during (peak) | after | disk written | inbox files |")
    print("|---|---|---|---|---|")
    print(
        f"| {before:.0f} MB | {sampler.peak:.0f} MB | {after:.0f} MB | "
        f"{disk / 1024 / 1024:.1f} MB | {inbox} |"
    )
    print(f"dropped {drops(core)} of {args.count} in {elapsed:.1f} s (publishing included)")
    print(f"a valid deployment afterwards: Success in {deploy_ms:.0f} ms")


def main() -> int:
    """Run once; keep the work directory with --keep."""
    args = parse_args()
    if not shutil.which("mosquitto_pub"):
        raise SystemExit("needs Mosquitto's clients (apt-get install mosquitto-clients)")
    root = Path(tempfile.mkdtemp(prefix="edge-intake-"))
    try:
        run(args, root)
    finally:
        if args.keep:
            print(f"work directory (core.log, mosquitto/, moto.log): {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
