# SPDX-License-Identifier: Apache-2.0
"""The demo's story, step by step: the reference document's commands against a live core."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from edge.demo.configs import THING, cloud_config, core_config, core_definition
from edge.demo.console import Printer
from edge.demo.processes import (
    DEMO_AWS_ENV,
    STARTUP_SECONDS,
    DemoError,
    Processes,
    use_demo_credentials,
)
from edge.errors import EdgeError
from edge.fixtures.reference import (
    DEMO_FUNCTIONS,
    FUNCTION_ARN,
    HANDLER,
    REFERENCE_ARN,
    REFERENCE_RESOURCES,
    REGION,
    SECRET_NAME,
    build_function_package,
)
from edge.fixtures.services import free_port

STEPS: Final = 12
#: `create-deployment --wait --timeout`: a demo deployment takes about a second.
DEPLOY_TIMEOUT_SECONDS: Final = 60
EXIT_INTERRUPTED: Final = 130


class DemoUnavailableError(EdgeError):
    """The `demo` extra (broker and emulator) is not installed."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            f"`edge demo` needs {' and '.join(missing)}: install the demo extra with "
            "`pip install -e '.[demo]'` (`make demo` does it)"
        )


def run_demo(
    *, keep: bool = False, secret_value: str | None = None, out: TextIO | None = None
) -> int:
    """Play the demo; return the exit status (0, 1 if a step failed, 130 if interrupted).

    Everything is stopped and the workspace removed before returning, whatever happened.

    Args:
        keep: Leave everything running at the end, print how to use it, wait for Ctrl-C.
        secret_value: The secret's value (default: random). Tests pass one to prove that it
            is printed nowhere; the labelled and rotated values contain it.
        out: Where to print (default: stdout).

    Raises:
        DemoUnavailableError: amqtt or moto is not installed.
    """
    missing = [m for m in ("amqtt", "moto") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoUnavailableError(missing)
    use_demo_credentials()
    printer = Printer(out or sys.stdout)
    workspace = Path(tempfile.mkdtemp(prefix="edge-demo-"))
    demo = Demo(
        processes=Processes(workspace, printer),
        secret_value=secret_value or f"demo-{secrets.token_urlsafe(18)}",
    )
    # Ctrl-C stops the demo even when started from a script that ignores SIGINT (a background
    # job of a non-interactive shell); SIGTERM stops it the same way.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        demo.play()
        if keep:
            demo.keep_running()
    except KeyboardInterrupt:
        printer.say("\ninterrupted: stopping everything")
        return EXIT_INTERRUPTED
    except EdgeError as exc:
        printer.say(f"\nedge demo: step {demo.step_number} failed: {exc}")
        printer.say(demo.core_log_tail())
        return 1
    finally:
        demo.cleanup()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM end the demo through the same cleanup."""
    raise KeyboardInterrupt


@dataclass
class Demo:
    """One run: the processes, the secret's values, what was created, and timings."""

    processes: Processes
    secret_value: str
    step_number: int = 0
    timings: list[tuple[str, float]] = field(default_factory=list)
    broker_url: str = ""
    moto_url: str = ""
    secret_arn: str = ""
    group_id: str = ""
    deployment_ids: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _sm: Any = None

    def __post_init__(self) -> None:
        """Mask the three values in everything printed."""
        self.printer.mask([self.secret_value, self.labelled_value, self.rotated_value])

    @property
    def printer(self) -> Printer:
        """Where the demo prints."""
        return self.processes.printer

    @property
    def workspace(self) -> Path:
        """The throwaway directory everything runs in."""
        return self.processes.workspace

    @property
    def labelled_value(self) -> str:
        """The value of the version labelled Label1 and Label2 (contains `secret_value`)."""
        return f"{self.secret_value}-labelled"

    @property
    def rotated_value(self) -> str:
        """The value after rotation (contains `secret_value`: one search finds all three)."""
        return f"{self.secret_value}-rotated"

    def play(self) -> None:
        """Run every step, printing as it goes, then the summary."""
        p = self.printer
        p.say("edge demo: the Greengrass V1 secret-resources story, end to end, on this machine")
        p.say(f"  workspace {self.workspace} (removed at the end; `edge demo --keep` keeps it)")
        with self.step("Start an MQTT broker (amqtt) and Secrets Manager + S3 (moto's server)"):
            self._start_services()
        with self.step("Start the control plane and a core that trusts its signing key"):
            self._start_cloud_and_core()
        with self.step("Create a secret in Secrets Manager, with the extra labels Label1, Label2"):
            self._create_secret()
        with self.step("create-resource-definition: the reference document's JSON, our ARN"):
            resources = self._define("resource", "MyGreengrassResources", "resources.json")
        with self.step("create-function-definition: MyLambdaFunction may read my-resource-id"):
            functions = self._define("function", "MyGreengrassFunctions", "functions.json")
        with self.step("publish-function: the reference handler + the unmodified greengrasssdk"):
            self._publish_function()
        with self.step("create-core-definition, create-group, create-group-version"):
            self._create_group(resources, functions)
        with self.step("create-deployment --wait: sign, publish, fetch, report"):
            self._deploy("--deployment-type", "NewDeployment")
            self._list_secrets()
        with self.step("edge invoke: the function reads the secret through greengrasssdk"):
            self._invoke(expect=self.secret_value)
        with self.step("Rotate the secret in Secrets Manager (put-secret-value: new AWSCURRENT)"):
            self._rotate()
        with self.step("create-deployment --deployment-type Redeployment --wait"):
            first = self.deployment_ids[0]
            self._deploy("--deployment-type", "Redeployment", "--deployment-id", first)
        with self.step("edge invoke again: the function reads the rotated version"):
            self._invoke(expect=self.rotated_value)
        self._summary()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Number, print and time one step."""
        self.step_number += 1
        self.printer.heading(f"[{self.step_number}/{STEPS}] {title}")
        started = time.monotonic()
        yield
        self.timings.append((title, time.monotonic() - started))

    # --- the steps ----------------------------------------------------------------------------

    def _start_services(self) -> None:
        broker_port, moto_port = free_port(), free_port()
        self.broker_url = f"mqtt://127.0.0.1:{broker_port}"
        self.moto_url = f"http://127.0.0.1:{moto_port}"
        python = sys.executable
        broker = self.processes.spawn(
            "broker", [python, "-m", "edge.demo.broker", "--port", str(broker_port)]
        )
        moto = self.processes.spawn(
            "moto", [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]
        )
        self.processes.wait_for_port(broker_port, broker)
        self.processes.wait_for_port(moto_port, moto)
        self.printer.say(
            f"    MQTT broker      {self.broker_url:28} amqtt {_version('amqtt')}, "
            f"pid {broker.proc.pid}"
        )
        self.printer.say(
            f"    Secrets Manager  {self.moto_url:28} moto {_version('moto')}, pid {moto.proc.pid}"
        )

    def _start_cloud_and_core(self) -> None:
        urls = {"broker_url": self.broker_url, "moto_url": self.moto_url}
        (self.workspace / "cloud.toml").write_text(cloud_config(**urls))
        (self.workspace / "core.toml").write_text(core_config(**urls))
        # The core refuses a config others can write, and a umask of 002 would make it so.
        (self.workspace / "core.toml").chmod(0o600)
        edge = self.processes.edge
        public_key = Path(edge("cloud", "--config", "cloud.toml", "init").stdout.strip())
        self.printer.say(f"      the signing key's public half: cloud/{public_key.name}")
        for line in edge("init", "--config", "core.toml").stdout.splitlines():
            self.printer.say(f"      {line.replace(f'{self.workspace}/', '')}")
        self.printer.command(["edge", "run", "--config", "core.toml"])
        core = self.processes.spawn(
            "core", [sys.executable, "-m", "edge", "run", "--config", "core.toml"]
        )
        self._wait_for_core_event("mqtt.connected")
        self.printer.say(
            f"      core {THING} (pid {core.proc.pid}) is connected to the broker and trusts "
            f"cloud/{public_key.name}; its log: core.log"
        )

    def _create_secret(self) -> None:
        sm = self._secretsmanager()
        created = sm.create_secret(Name=SECRET_NAME, SecretString=self.secret_value)
        self.secret_arn = created["ARN"]
        labelled = sm.put_secret_value(
            SecretId=self.secret_arn,
            SecretString=self.labelled_value,
            VersionStages=["Label1", "Label2"],
        )
        p = self.printer
        p.say(f"    {self.secret_arn}")
        p.say(f"      AWSCURRENT      VersionId {created['VersionId']}  SecretString ****")
        p.say(f"      Label1, Label2  VersionId {labelled['VersionId']}  SecretString ****")

    def _define(self, noun: str, name: str, file_name: str) -> dict[str, Any]:
        text = REFERENCE_RESOURCES if noun == "resource" else DEMO_FUNCTIONS
        (self.workspace / file_name).write_text(text.replace(REFERENCE_ARN, self.secret_arn))
        created = self.processes.cloud(
            f"create-{noun}-definition", "--name", name, "--initial-version", f"file://{file_name}"
        )
        self.printer.say(f"      -> Id {created['Id']}, version {created['LatestVersion']}")
        return created

    def _publish_function(self) -> None:
        size = build_function_package(self.workspace / "app.zip")
        self.printer.say(f"      app.zip: app.py + greengrasssdk/ ({size / 1024:.0f} KiB)")
        published = self.processes.cloud(
            "publish-function",
            *("--function-arn", FUNCTION_ARN, "--zip-file", "fileb://app.zip"),
            *("--handler", HANDLER),
        )
        self.printer.say(f"      -> {published['Code']['Uri']}")

    def _create_group(self, resources: dict[str, Any], functions: dict[str, Any]) -> None:
        (self.workspace / "core.json").write_text(core_definition())
        cloud = self.processes.cloud
        cores = cloud(
            "create-core-definition", "--name", THING, "--initial-version", "file://core.json"
        )
        self.group_id = cloud("create-group", "--name", "MyGroup")["Id"]
        version = cloud(
            "create-group-version",
            *("--group-id", self.group_id),
            *("--core-definition-version-arn", cores["LatestVersionArn"]),
            *("--resource-definition-version-arn", resources["LatestVersionArn"]),
            *("--function-definition-version-arn", functions["LatestVersionArn"]),
        )
        self.printer.say(f"      -> group {self.group_id}, version {version['Version']}")

    def _deploy(self, *options: str) -> None:
        answer = self.processes.follow(
            *("cloud", "--config", "cloud.toml", "create-deployment"),
            *("--group-id", self.group_id, *options),
            *("--wait", "--timeout", str(DEPLOY_TIMEOUT_SECONDS)),
        )
        self.deployment_ids.append(json.loads(answer)["DeploymentId"])

    def _list_secrets(self) -> None:
        listing = self.processes.edge("secrets", "list", "--config", "core.toml").stdout
        for line in listing.splitlines():
            self.printer.say(f"      {line}")

    def _invoke(self, *, expect: str) -> None:
        result = self.processes.edge(
            "invoke", "--config", "core.toml", "--function-arn", FUNCTION_ARN, "--payload", "{}"
        )
        answer = json.loads(result.stdout)
        length = answer.pop("SecretStringLength")
        self.printer.say(f"      -> {json.dumps({**answer, 'SecretString': '****'})}")
        current = self._secretsmanager().get_secret_value(SecretId=self.secret_arn)
        if answer["VersionId"] != current["VersionId"]:
            raise DemoError(f"the function read version {answer['VersionId']}, not AWSCURRENT")
        if length != len(expect):
            raise DemoError("the function read another value than the one in Secrets Manager")
        self.printer.say(
            f"      it read AWSCURRENT's version in Secrets Manager ({current['VersionId']}), "
            f"a value of {length} characters"
        )

    def _rotate(self) -> None:
        sm = self._secretsmanager()
        rotated = sm.put_secret_value(SecretId=self.secret_arn, SecretString=self.rotated_value)
        self.printer.say(f"      AWSCURRENT -> VersionId {rotated['VersionId']}  SecretString ****")
        self.printer.say(
            "      (the core serves the version it holds until the group is redeployed)"
        )

    def _summary(self) -> None:
        p = self.printer
        p.heading("Summary")
        for title, seconds in self.timings:
            p.say(f"  {seconds:6.2f} s  {title}")
        p.say(f"  {time.monotonic() - self.started:6.2f} s  in all")
        places = {
            "every CLI answer and progress line": "".join(self.processes.outputs),
            "core.log": self.core_log(),
            "the control plane's database": _read_text(self.workspace / "cloud"),
            "the core's store (encrypted)": _read_text(self.workspace / "state"),
        }
        found = [name for name, text in places.items() if self.secret_value in text]
        if found:
            raise DemoError(f"the secret's value was found in {', '.join(found)}")
        p.say(f"  the secret's three values appear in none of: {', '.join(places)}")

    def keep_running(self) -> None:
        """Print how to poke at the running demo, then wait for Ctrl-C."""
        p = self.printer
        env = " ".join(f"{k}={v}" for k, v in DEMO_AWS_ENV.items())
        invoke = f"edge invoke --config core.toml --function-arn {FUNCTION_ARN}"
        cloud = f"edge cloud --config cloud.toml {{}} --group-id {self.group_id}"
        p.heading("Everything is still running. In another terminal:")
        for line in (
            f"cd {self.workspace}",
            f'export PATH="{Path(sys.executable).parent}:$PATH" {env}',
            "edge secrets list --config core.toml",
            f"{invoke} --payload '{{}}'",
            f"""{invoke} --payload '{{"VersionStage": "Label1"}}'""",
            cloud.format("list-deployments"),
            cloud.format("get-deployment-status") + f" --deployment-id {self.deployment_ids[-1]}",
            cloud.format("create-deployment") + " --deployment-type NewDeployment --wait",
            "tail -f core.log   # the core's log, JSON lines",
            (
                f"aws --endpoint-url {self.moto_url} secretsmanager put-secret-value "
                f"--secret-id {SECRET_NAME} --secret-string NEW-VALUE   # with the AWS CLI"
            ),
            f"# configs: {self.workspace}/core.toml, {self.workspace}/cloud.toml",
            f"# broker {self.broker_url}, Secrets Manager and S3 {self.moto_url}",
        ):
            p.say(f"  {line}")
        try:
            # Said inside the `try`: a Ctrl-C that follows at once is the way to end, too.
            p.say("\nPress Ctrl-C to stop everything and remove the workspace.")
            while True:
                for service in self.processes.services:
                    service.check()
                time.sleep(0.5)
        except KeyboardInterrupt:
            # The way to end `--keep`: a success, not an interruption.
            p.say("\nCtrl-C: stopping everything")

    # --- plumbing -----------------------------------------------------------------------------

    def _secretsmanager(self) -> Any:  # noqa: ANN401 - botocore clients are untyped
        if self._sm is None:
            import botocore.session  # noqa: PLC0415 - only here does the demo call AWS itself

            self._sm = botocore.session.get_session().create_client(
                "secretsmanager", region_name=REGION, endpoint_url=self.moto_url
            )
        return self._sm

    def _wait_for_core_event(self, name: str) -> None:
        core = next(s for s in self.processes.services if s.name == "core")
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if any(e.get("event") == name for e in _json_lines(self.core_log())):
                return
            core.check()
            time.sleep(0.05)
        raise DemoError(f"the core logged no {name} within {STARTUP_SECONDS:g} s")

    def core_log(self) -> str:
        """The core's log so far."""
        return _read_text(self.workspace / "core.log")

    def core_log_tail(self, lines: int = 15) -> str:
        """The last lines of the core's log (printed masked), for a failure report."""
        tail = self.core_log().splitlines()[-lines:]
        return "\n".join(["  the last lines of core.log:", *(f"    {line}" for line in tail)])

    def cleanup(self) -> None:
        """Stop every process (the core first), remove the workspace; Ctrl-C can't cut it."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stopped = self.processes.stop_all()
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.printer.say(
                f"\nStopped {', '.join(stopped) or 'nothing'}; removed {self.workspace}"
            )
        finally:
            signal.signal(signal.SIGINT, previous)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                yield doc


def _read_text(path: Path) -> str:
    """A file's text, or all the files' below a directory, bytes decoded leniently."""
    if path.is_file():
        return path.read_bytes().decode("utf-8", "replace")
    if path.is_dir():
        return "".join(_read_text(p) for p in sorted(path.rglob("*")) if p.is_file())
    return ""
