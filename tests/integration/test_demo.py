"""`edge demo` as a newcomer runs it: a clean environment, every step, no value shown, no leftovers.

The demo takes a hidden `--secret-value`: the test picks the value, so it can prove the value
is printed nowhere. The labelled and rotated values the demo derives contain it, so one search
covers all three.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import cli
from edge.demo.console import Printer
from edge.fixtures.reference import FUNCTION_ARN, build_function_package

pytestmark = pytest.mark.network

EDGE = Path(sys.executable).parent / "edge"
STEPS = 12


def clean_env(tmp_path: Path, marker: str) -> dict[str, str]:
    """No AWS_* variable, a fresh HOME and TMPDIR, and a marker every child process inherits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), EDGE_DEMO_MARKER=marker)
    return env


def leftovers(marker: str, workspace: Path) -> list[str]:
    """Processes that carry the marker, or run or work inside the demo's workspace."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = str((entry / "cwd").readlink())
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if f"EDGE_DEMO_MARKER={marker}".encode() in environ.split(b"\0") or (
            str(workspace) in cmdline or cwd.startswith(str(workspace))
        ):
            found.append(f"{entry.name}: {cmdline}")
    return found


def workspace_of(output: str) -> Path:
    match = re.search(r"workspace (\S+)", output)
    assert match is not None, output
    return Path(match[1])


def read_until(proc: subprocess.Popen[str], text: str, timeout: float = 60) -> Iterator[str]:
    """Yield the demo's stdout lines up to and including the first that contains `text`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        yield line
        if text in line:
            return
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s"
    pytest.fail(f"the demo ended before printing {text!r}")


@contextlib.contextmanager
def demo_process(
    args: list[str], env: dict[str, str], cwd: Path
) -> Iterator[subprocess.Popen[str]]:
    """`edge demo ARGS` as the foreground job of a terminal: a process group of its own.

    If the test fails with the demo still running, it gets Ctrl-C (so it stops what it
    started), then SIGKILL, and whatever carries the test's marker is killed too.
    """
    with subprocess.Popen(
        [str(EDGE), "demo", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            for entry in leftovers(env["EDGE_DEMO_MARKER"], cwd / "tmp"):
                with contextlib.suppress(OSError):
                    os.kill(int(entry.split(":")[0]), signal.SIGKILL)


def ctrl_c(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C at a terminal: SIGINT to the foreground process group; return the rest of stdout."""
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    return rest


def test_demo_plays_the_story_masks_the_value_and_leaves_nothing(tmp_path: Path) -> None:
    """From a clean environment: twelve steps, exit 0, no value anywhere, nothing left over."""
    value = f"test-{secrets.token_urlsafe(18)}"
    marker = secrets.token_hex(8)
    started = time.monotonic()
    result = subprocess.run(
        [str(EDGE), "demo", "--secret-value", value],
        env=clean_env(tmp_path, marker),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert value not in output, "the secret's value was printed"
    headings = re.findall(rf"^\[(\d+)/{STEPS}\] (.+)$", result.stdout, re.MULTILINE)
    assert [int(n) for n, _ in headings] == list(range(1, STEPS + 1)), output
    titles = "\n".join(title for _, title in headings)
    for words in (
        "broker",
        "Create a secret",
        "create-resource-definition",
        "create-function-definition",
        "publish-function",
        "create-group-version",
        "create-deployment --wait",
        "edge invoke",
        "Rotate",
        "Redeployment",
    ):
        assert words in titles
    # Both deployments succeeded, shown as they went.
    assert len(re.findall(r"edge: deployment \S+: InProgress", output)) == 2
    assert len(re.findall(r"edge: deployment \S+: Success", output)) == 2
    # The function read the value, masked on screen, then the rotated version.
    answers = re.findall(r'-> (\{"Name": .*\})$', result.stdout, re.MULTILINE)
    assert len(answers) == 2, output
    assert all('"SecretString": "****"' in a for a in answers)
    versions = [re.search(r'"VersionId": "([^"]+)"', a)[1] for a in answers]  # type: ignore[index]
    assert versions[0] != versions[1]
    assert "Summary" in output
    assert "appear in none of" in output
    workspace = workspace_of(output)
    assert workspace.parent == tmp_path / "tmp"
    assert not workspace.exists()
    assert leftovers(marker, workspace) == []
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"


def test_keep_prints_commands_that_work_and_ctrl_c_cleans_up(tmp_path: Path) -> None:
    """`--keep`: the printed commands run as printed; Ctrl-C then stops and removes it all."""
    value = f"test-{secrets.token_urlsafe(18)}"
    marker = secrets.token_hex(8)
    env = clean_env(tmp_path, marker)
    with demo_process(["--keep", "--secret-value", value], env, tmp_path) as proc:
        lines = list(read_until(proc, "Press Ctrl-C", timeout=90))
        output = "".join(lines)
        workspace = workspace_of(output)
        assert workspace.is_dir()
        start = next(i for i, line in enumerate(lines) if "still running" in line)
        commands = [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]
        # Run what a person would paste, but nothing that waits forever or needs the AWS CLI.
        script = [c for c in commands if not c.startswith(("tail -f", "aws "))]
        assert script[0] == f"cd {workspace}"
        assert any(c.startswith("edge invoke") for c in script)
        shell_env = {k: v for k, v in env.items() if k != "EDGE_DEMO_MARKER"}
        poked = subprocess.run(
            ["bash", "-euc", "\n".join(script)],
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert poked.returncode == 0, poked.stdout + poked.stderr
        assert '"VersionStages": ["Label1", "Label2"]' in poked.stdout
        assert "my-resource-id" in poked.stdout
        assert value not in poked.stdout + poked.stderr
        rest = ctrl_c(proc)
    assert proc.returncode == 0, output + rest
    assert value not in output + rest
    assert "removed" in rest
    assert not workspace.exists()
    assert leftovers(marker, workspace) == []


def test_ctrl_c_in_the_middle_stops_everything(tmp_path: Path) -> None:
    """Interrupted at step 4, the demo exits 130 with every process stopped and no workspace."""
    marker = secrets.token_hex(8)
    with demo_process([], clean_env(tmp_path, marker), tmp_path) as proc:
        output = "".join(read_until(proc, f"[4/{STEPS}]"))
        workspace = workspace_of(output)
        rest = ctrl_c(proc)
    assert proc.returncode == 130, output + rest
    assert "interrupted" in rest
    assert "Traceback" not in rest
    assert not workspace.exists()
    assert leftovers(marker, workspace) == []


def test_without_the_demo_extra_it_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No amqtt: one `edge: error:` line naming the extra to install, exit status 2."""
    find_spec = importlib.util.find_spec

    def without_amqtt(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "amqtt" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_amqtt)
    # Leave the process's logging as later tests expect it.
    monkeypatch.setattr(cli, "configure_logging", lambda **_: None)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge: error: `edge demo` needs amqtt: ")
    assert "pip install -e '.[demo]'" in err


def test_printer_masks_values_and_prints_commands_a_shell_reads_back() -> None:
    """Every line is masked; long commands are cut before options, as a shell would join them."""
    out = io.StringIO()
    printer = Printer(out)
    printer.mask(["value-one-xyz"])
    printer.say("read value-one-xyz")
    args = ["edge", "invoke", "--config", "core.toml", "--function-arn", FUNCTION_ARN]
    args += ["--payload", '{"VersionStage": "Label1"}']
    printer.command(args)
    first, command = out.getvalue().split("\n", 1)
    assert first == "read ****"
    assert "\\\n" in command
    assert shlex.split(command.strip().removeprefix("$ ").replace("\\\n", " ")) == args


def test_function_package_holds_the_handler_and_the_unmodified_sdk(tmp_path: Path) -> None:
    """app.py is the reference handler (valid Python); greengrasssdk/ is the PyPI package's."""
    size = build_function_package(tmp_path / "app.zip")
    assert size == (tmp_path / "app.zip").stat().st_size
    with zipfile.ZipFile(tmp_path / "app.zip") as archive:
        names = set(archive.namelist())
        source = archive.read("app.py").decode()
    assert {"app.py", "greengrasssdk/__init__.py", "greengrasssdk/SecretsManager.py"} <= names
    compile(source, "app.py", "exec")
    assert "greengrasssdk.client('secretsmanager')" in source
    assert "client.get_secret_value(" in source
