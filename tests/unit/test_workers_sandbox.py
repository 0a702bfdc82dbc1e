"""Worker confinement: what the core hides, how a plan becomes Landlock rules, and that they hold.

The rules are checked against a real kernel: each test that needs Landlock confines a child
process of its own (a confined process can't be set free, so never pytest's) and has it try
the accesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import SandboxUnavailableError
from edge.workers import landlock
from edge.workers.sandbox import Sandbox, hidden_paths

needs_landlock = pytest.mark.skipif(
    landlock.landlock_abi() == 0, reason="this kernel has no Landlock to test"
)


def tree(root: Path, *paths: str) -> None:
    for relative in paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relative)


def test_partition_grants_everything_but_the_excluded_subtrees(tmp_path: Path) -> None:
    """Siblings along the way are granted whole; the excluded subtree and symlinks are not."""
    tree(tmp_path, "a/state/key", "a/state/store", "a/code/x.py", "a/notes", "b/c")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "state")
    root = str(tmp_path)
    grants, splits = landlock.partition(root, [str(tmp_path / "a" / "state")])
    assert sorted(grants) == [f"{root}/a/code", f"{root}/a/notes", f"{root}/b"]
    assert splits == [root, f"{root}/a"]
    assert landlock.partition(root, []) == ([root], [])
    assert landlock.partition(f"{root}/a/state/key", [f"{root}/a/state"]) == ([], [])
    # A sibling whose name merely starts like the excluded one is still granted.
    tree(tmp_path, "a/state-backup/x")
    grants, _ = landlock.partition(root, [f"{root}/a/state"])
    assert f"{root}/a/state-backup" in grants


def test_rules_hide_dev_but_the_usual_devices_and_split_writable_roots(tmp_path: Path) -> None:
    """/dev is closed but for null, zero, random…; a writable root is split around code."""
    tree(tmp_path, "tmp/scratch/x", "tmp/code/app.py", "state/key")
    plan = {
        "hidden": [str(tmp_path / "state")],
        "protected": [str(tmp_path / "tmp" / "code")],
        "writable": [str(tmp_path / "tmp")],
    }
    rules = dict(landlock.rules(plan, abi=3))
    assert "/dev" not in rules
    assert rules["/dev/urandom"] & landlock._READ_FILE
    assert not any(path.startswith("/dev/sd") or path == "/dev/mem" for path in rules)
    assert str(tmp_path / "state") not in rules
    assert rules[str(tmp_path / "tmp" / "scratch")] & landlock._WRITE_FILE
    assert str(tmp_path / "tmp") not in {p for p, r in rules.items() if r & landlock._WRITE_FILE}


def test_the_core_hides_its_own_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """State dir, key, config, MQTT client key, AWS credentials and the operator's extra paths."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "creds"))
    path = tmp_path / "core.toml"
    path.write_text(
        """
[core]
thing_name = "core-1"
private_key = "/etc/edge/core.key"
[mqtt]
url = "mqtts://broker:8883"
cert_file = "client.crt"
key_file = "client.key"
[aws]
region = "eu-west-1"
[workers]
hidden_paths = ["/srv/other-credentials", "more"]
writable_paths = ["/scratch"]
sandbox = "required"
"""
    )
    config = load_config(path)
    hidden = set(hidden_paths(config))
    assert {
        tmp_path / "state",
        path,
        Path("/etc/edge/core.key"),
        tmp_path / "client.key",
        tmp_path / "creds",
        Path.home() / ".aws",
        Path("/srv/other-credentials"),
        tmp_path / "more",
    } <= hidden
    assert tmp_path / "client.crt" not in hidden  # a certificate is public
    assert config.workers.writable_paths == (Path("/scratch"),)
    assert config.workers.sandbox == "required"


def test_sandbox_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """off: no plan; required without Landlock: a clear error naming the fix."""
    off = Sandbox.create(mode="off", hidden=(tmp_path,), protected=(), writable=())
    assert off.plan(root_worker=True) is None
    monkeypatch.setattr("edge.workers.sandbox.landlock_abi", lambda: 0)
    with pytest.raises(SandboxUnavailableError, match='sandbox = "auto"'):
        Sandbox.create(mode="required", hidden=(tmp_path,), protected=(), writable=())
    auto = Sandbox.create(mode="auto", hidden=(tmp_path,), protected=(), writable=())
    plan = json.loads(auto.plan(root_worker=True) or "")
    assert plan["landlock"] is False  # no rules where the kernel has none…
    assert plan["drop_capabilities"] is True  # …but a uid-0 worker still loses its powers


CHILD = """
import json, os, sys
from edge.workers import landlock
abi = landlock.confine(json.loads(sys.argv[1]))
out = {"abi": abi}
for name, action in [
    ("read hidden", lambda: open(sys.argv[2] + "/state/key").read()),
    ("read code", lambda: open(sys.argv[2] + "/code/app.py").read()),
    ("write code", lambda: open(sys.argv[2] + "/code/app.py", "a").write("x")),
    ("write scratch", lambda: open(sys.argv[2] + "/scratch/new", "w").write("x")),
    ("write hidden", lambda: open(sys.argv[2] + "/state/new", "w").write("x")),
    ("read etc", lambda: open("/etc/passwd").read()),
    ("dev null", lambda: open("/dev/null", "w").write("x")),
    ("signal parent", lambda: os.kill(os.getppid(), 0)),
    ("caps", lambda: open("/proc/self/status").read().split("CapEff:")[1].split()[0]),
]:
    try:
        out[name] = ("ok", action())
    except OSError as exc:
        out[name] = ("denied", exc.errno)
print(json.dumps(out))
"""


@needs_landlock
def test_a_confined_process_reads_and_writes_only_what_its_plan_says(tmp_path: Path) -> None:
    """A real child, confined by a plan like the core's: hidden, read-only, writable, no caps."""
    tree(tmp_path, "state/key", "code/app.py", "scratch/.keep")
    sandbox = Sandbox.create(
        mode="required",
        hidden=(tmp_path / "state",),
        protected=(tmp_path / "code",),
        writable=(tmp_path,),
    )
    plan = sandbox.plan(root_worker=os.geteuid() == 0)
    assert plan is not None
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, plan, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    seen = json.loads(done.stdout)
    assert seen["abi"] == landlock.landlock_abi()
    assert seen["read hidden"][0] == "denied"
    assert seen["read code"] == ["ok", "code/app.py"]
    assert seen["write code"][0] == "denied"
    assert seen["write scratch"] == ["ok", 1]
    assert seen["write hidden"][0] == "denied"
    assert seen["read etc"][0] == "ok"
    assert seen["dev null"] == ["ok", 1]
    if seen["abi"] >= 6:
        assert seen["signal parent"][0] == "denied"
    if os.geteuid() == 0:
        assert seen["caps"] == ["ok", "0000000000000000"]
    assert not (tmp_path / "state" / "new").exists()


WITHOUT_SETPCAP = """
import ctypes, json, os
from edge.workers import landlock
libc = ctypes.CDLL(None, use_errno=True)
# As in a hardened container: uid 0 with what it has now, less CAP_SETPCAP (8).
held = int(open("/proc/self/status").read().split("CapPrm:")[1].split()[0], 16) & ~(1 << 8)
low, high = held & 0xFFFFFFFF, held >> 32
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)(low, low, 0, high, high, 0)
assert libc.capset(header, data) == 0, os.strerror(ctypes.get_errno())
landlock.confine({"landlock": False, "drop_capabilities": True})
status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
print(json.dumps({k: status[k].strip() for k in ("CapEff", "CapPrm", "NoNewPrivs")}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="only uid 0 has capabilities to drop")
def test_a_uid0_worker_without_setpcap_still_ends_with_no_capabilities() -> None:
    """Where CAP_SETPCAP is missing the drop still empties every set and pins no_new_privs."""
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, "-S", "-c", WITHOUT_SETPCAP],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == {
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
        "NoNewPrivs": "1",
    }
