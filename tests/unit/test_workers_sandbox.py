"""Worker confinement: what the core hides, how a plan becomes Landlock rules, and that they hold.

The rules are checked against a real kernel: each test that needs Landlock confines a child
process of its own (a confined process can't be set free, so never pytest's) and has it try
the accesses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.child import landlock, mountns
from edge.child.privileges import ConfinementError
from edge.config import WorkerUser, load_config
from edge.errors import ConfigError, SandboxUnavailableError, WorkerUserError
from edge.workers.process import check_worker_users, worker_user
from edge.workers.sandbox import NamespaceProbe, Sandbox, hidden_paths, probe_namespace
from edge.workers.spec import CodeRef, FunctionSpec, RunAs
from tests.support.users import checkout_reachable, python_or_skip

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


def test_the_key_that_buys_aws_credentials_is_hidden(tmp_path: Path) -> None:
    """With `[aws] credentials = "iot"`, the key exchanged for AWS credentials is hidden too."""
    path = tmp_path / "core.toml"
    path.write_text(
        """
[core]
thing_name = "core-1"
[mqtt]
url = "mqtt://broker:1883"
[aws]
region = "eu-west-1"
credentials = "iot"
iot_credentials_endpoint = "c2.credentials.iot.eu-west-1.amazonaws.com"
role_alias = "edge"
iot_cert_file = "iot.crt"
iot_key_file = "iot.key"
"""
    )
    path.chmod(0o600)
    hidden = set(hidden_paths(load_config(path)))
    assert tmp_path / "iot.key" in hidden
    assert tmp_path / "iot.crt" not in hidden


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
from edge.child.confine import confine
abi = confine(json.loads(sys.argv[1]))
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
        mode="auto",
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
from edge.child.confine import confine
libc = ctypes.CDLL(None, use_errno=True)
# As in a hardened container: uid 0 with what it has now, less CAP_SETPCAP (8).
held = int(open("/proc/self/status").read().split("CapPrm:")[1].split()[0], 16) & ~(1 << 8)
low, high = held & 0xFFFFFFFF, held >> 32
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)(low, low, 0, high, high, 0)
assert libc.capset(header, data) == 0, os.strerror(ctypes.get_errno())
confine({"landlock": False, "drop_capabilities": True})
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


#: How a worker of this test's uid enters its own mount namespace ('' where it can't).
NAMESPACE = probe_namespace(())[0]
needs_namespace = pytest.mark.skipif(
    not NAMESPACE, reason="this kernel gives this uid no private mount namespace to test"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only a root core switches users")
NOBODY = WorkerUser(name="nobody", uid=65534, gid=65534)


def workers_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "core.toml"
    path.write_text(
        f"""
[core]
thing_name = "core-1"
[mqtt]
url = "mqtt://broker:1883"
[aws]
region = "eu-west-1"
[workers]
{body}
"""
    )
    return path


def test_default_user_is_looked_up_by_name_or_uid_and_never_root(tmp_path: Path) -> None:
    """A known name or uid gives its ids; unknown, root or a bool: a ConfigError saying the fix."""
    named = load_config(workers_config(tmp_path, 'default_user = "nobody"'))
    assert named.workers.default_user == WorkerUser(name="nobody", uid=65534, gid=65534)
    by_uid = load_config(workers_config(tmp_path, "default_user = 65534"))
    assert by_uid.workers.default_user == named.workers.default_user
    assert load_config(workers_config(tmp_path, "")).workers.default_user is None
    with pytest.raises(ConfigError, match=r"workers\.default_user.*useradd --system"):
        load_config(workers_config(tmp_path, 'default_user = "no-such-user-edge"'))
    with pytest.raises(ConfigError, match="unprivileged user, not root"):
        load_config(workers_config(tmp_path, 'default_user = "root"'))
    with pytest.raises(ConfigError, match="user name or a uid"):
        load_config(workers_config(tmp_path, "default_user = true"))


def test_required_names_every_wall_the_kernel_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sandbox = "required" refuses with each missing wall, its cause and its fix; auto warns."""
    monkeypatch.setattr("edge.workers.sandbox.landlock_abi", lambda: 0)
    monkeypatch.setattr(
        "edge.workers.sandbox.probe_namespace",
        lambda _hidden: ("", "unshare(CLONE_NEWNS): Operation not permitted"),
    )
    monkeypatch.setattr(
        "edge.workers.sandbox.probe_seccomp", lambda: "this kernel has no seccomp filters"
    )
    with pytest.raises(SandboxUnavailableError) as caught:
        Sandbox.create(mode="required", hidden=(tmp_path,), protected=(), writable=())
    message = str(caught.value)
    assert "this kernel has no Landlock" in message
    assert "no private mount namespace (unshare(CLONE_NEWNS): Operation not permitted)" in message
    assert "no seccomp filter (this kernel has no seccomp filters)" in message
    assert "lsm=landlock" in message
    assert "CAP_SYS_ADMIN" in message or "user namespaces" in message
    auto = Sandbox.create(mode="auto", hidden=(tmp_path,), protected=(), writable=())
    warned = {
        event: fields
        for level, event, fields in auto.notices(root=False, default_user=None)
        if level == "warning"
    }
    assert set(warned) == {
        "workers.sandbox_unavailable",
        "workers.namespace_unavailable",
        "workers.seccomp_unavailable",
    }
    assert "Operation not permitted" in str(warned["workers.namespace_unavailable"]["problem"])
    assert 'sandbox = "required"' in str(warned["workers.namespace_unavailable"]["fix"])
    plan = json.loads(auto.plan(root_worker=False) or "")
    assert (plan["namespace"], plan["seccomp"], plan["landlock"]) == (None, False, False)


def test_a_root_core_says_once_who_its_workers_run_as(tmp_path: Path) -> None:
    """Root without default_user: uid 0 is logged with the key to set; with it, the user."""
    off = Sandbox.create(mode="off", hidden=(tmp_path,), protected=(), writable=())
    assert [e for _, e, _ in off.notices(root=True, default_user=None)] == ["workers.run_as_root"]
    assert off.notices(root=True, default_user="nobody") == [
        ("info", "workers.default_user", {"user": "nobody"})
    ]
    assert off.notices(root=False, default_user="nobody") == []


def test_the_worker_switches_user_itself_only_after_mounting_as_root(tmp_path: Path) -> None:
    """Entered as root, the plan carries RunAs (the core starts the child as root); else not."""
    base = Sandbox.create(mode="off", hidden=(tmp_path,), protected=(), writable=())
    as_root = dataclasses.replace(base, mode="auto", namespace=mountns.AS_ROOT)
    as_user = dataclasses.replace(base, mode="auto", namespace=mountns.AS_USER)
    assert as_root.switches_user
    assert not as_user.switches_user
    assert json.loads(as_root.plan(root_worker=False, run_as=(7, 8)) or "")["run_as"] == [7, 8]
    assert json.loads(as_user.plan(root_worker=False, run_as=(7, 8)) or "")["run_as"] is None


COVERED = """
import json, os, socket, sys
from edge.child import mountns
root = sys.argv[1]
mountns.isolate({"namespace": sys.argv[2], "hidden": [root + "/state", root + "/core.toml",
    root + "/state/core.key", "/dev/null", root + "/absent"],
    "reachable": [root + "/state/ipc/core.sock"]})
out = {}
for name, action in [
    ("list state", lambda: sorted(os.listdir(root + "/state"))),
    ("list ipc", lambda: sorted(os.listdir(root + "/state/ipc"))),
    ("stat key", lambda: os.stat(root + "/state/core.key").st_size),
    ("read config", lambda: open(root + "/core.toml").read()),
    ("chmod state", lambda: os.chmod(root + "/state", 0o755)),
    ("chmod config", lambda: os.chmod(root + "/core.toml", 0o644)),
    ("write config", lambda: open(root + "/core.toml", "w").write("x")),
    ("new in state", lambda: open(root + "/state/new", "w").write("x")),
    ("connect", lambda: socket.socket(socket.AF_UNIX).connect(root + "/state/ipc/core.sock")),
    ("dev null", lambda: open("/dev/null", "w").write("x")),
    ("caps", lambda: open("/proc/self/status").read().split("CapEff:")[1].split()[0]),
]:
    try:
        out[name] = ["ok", action()]
    except OSError as exc:
        out[name] = ["denied", exc.strerror]
print(json.dumps(out))
"""


def run_covered(root: Path, kind: str, *, python: str, user: int | None = None) -> dict[str, Any]:
    """Lay out a core's files under `root`, run COVERED there (as `user`), return what it saw.

    Also checks that nothing changed in the test's own view: files, modes, the socket.
    """
    tree(root, "state/core.key", "state/secrets.store", "core.toml")
    (root / "state" / "ipc").mkdir()
    if user is not None:
        for path in (root, *root.rglob("*")):
            os.chown(path, user, user)
    (root / "state").chmod(0o700)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "state" / "ipc" / "core.sock"))
    server.listen()
    if user is not None:
        os.chown(root / "state" / "ipc" / "core.sock", user, user)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": os.environ["PATH"]}
    try:
        done = subprocess.run(
            [python, "-S", "-c", COVERED, str(root), kind],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
            cwd="/",
            user=user,
            group=user,
            extra_groups=None if user is None else [],
        )
    finally:
        server.close()
    assert stat.S_IMODE((root / "state").stat().st_mode) == 0o700
    assert (root / "core.toml").read_text() == "core.toml"
    assert sorted(p.name for p in (root / "state").iterdir()) == [
        "core.key",
        "ipc",
        "secrets.store",
    ]
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def assert_covered(seen: dict[str, Any]) -> None:
    """What COVERED sees in a worker's own view: empty sealed covers, the socket bound back."""
    assert seen["list state"] == ["ok", ["ipc"]]
    assert seen["list ipc"] == ["ok", ["core.sock"]]
    assert seen["stat key"] == ["denied", "No such file or directory"]
    assert seen["read config"] == ["ok", ""]  # Landlock, the second wall, refuses even that
    for name in ("chmod state", "chmod config", "write config", "new in state"):
        assert seen[name] == ["denied", "Read-only file system"], (name, seen[name])
    assert seen["connect"] == ["ok", None]  # the core's very socket, bound back alone
    assert seen["dev null"] == ["ok", 1]  # a device named as hidden is left as it is


@needs_namespace
def test_covers_hide_the_cores_files_and_keep_the_socket(tmp_path: Path) -> None:
    """A real child in its own namespace, of this test's uid: covers, and the socket reachable."""
    assert_covered(run_covered(tmp_path, NAMESPACE, python=sys.executable))


@pytest.fixture
def reachable_checkout() -> Iterator[None]:
    """The child of nobody imports `edge` from this checkout: let it reach it."""
    with checkout_reachable():
        yield


@needs_root
@pytest.mark.usefixtures("reachable_checkout")
def test_a_non_root_core_covers_through_a_user_namespace_and_keeps_no_capability() -> None:
    """As nobody: a user namespace mapping only its ids; every capability gone after mounting.

    Root runs this test, so the other way (CLONE_NEWUSER, the uid and gid maps, the capability
    drop) is taken by a child of nobody, in a directory of its own under /var/tmp.
    """
    nobody = pwd.getpwnam("nobody")
    python = python_or_skip(nobody)
    probe = subprocess.run(
        [python, "-S", "-m", "edge.child.mountns", "probe", mountns.AS_USER],
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(
            "this kernel lets no unprivileged user make a user namespace (sysctls "
            "user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns): "
            f"{probe.stdout}"
        )
    root = Path(tempfile.mkdtemp(prefix="edge-userns-", dir="/var/tmp"))
    try:
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        seen = run_covered(root / "r", mountns.AS_USER, python=python, user=nobody.pw_uid)
    finally:
        shutil.rmtree(root)
    assert_covered(seen)
    assert seen["caps"] == ["ok", "0000000000000000"]  # nothing left to unmount the covers with


def test_a_hidden_file_without_a_hidden_directory_is_refused(tmp_path: Path) -> None:
    """Covers of files are staged in a hidden directory: with none, a clear ConfinementError."""
    tree(tmp_path, "core.toml")
    with pytest.raises(ConfinementError, match="hidden directory to stage"):
        mountns.cover([str(tmp_path / "core.toml")], [])


def spec(name: str, run_as: RunAs | None = None) -> FunctionSpec:
    return FunctionSpec(
        function_id=name,
        function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}:1",
        handler="app.handler",
        code=CodeRef(uri="file:///code.zip"),
        run_as=run_as,
    )


@needs_root
def test_a_root_cores_workers_run_as_run_as_else_default_user() -> None:
    """RunAs wins; without it, default_user; without both, the core's own (uid 0)."""
    assert worker_user(spec("a", RunAs(uid=5, gid=6)), NOBODY) == RunAs(uid=5, gid=6)
    assert worker_user(spec("b"), NOBODY) == RunAs(uid=65534, gid=65534)
    assert worker_user(spec("c"), None) is None


@needs_root
async def test_a_user_who_cannot_run_the_interpreter_or_read_the_code_is_named(
    tmp_path: Path,
) -> None:
    """The deployment-time check: the interpreter in a 0700 dir, then code nobody can read."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "python").symlink_to(sys.executable)
    code = private / "code"
    code.mkdir()
    tree(code, "app.py")
    with pytest.raises(WorkerUserError) as caught:
        await check_worker_users(
            [(spec("a"), code)], python=private / "python", default_user=NOBODY
        )
    message = str(caught.value)
    assert "function:a:1 runs as [workers] default_user nobody (uid 65534)" in message
    assert f"can't execute the interpreter {private / 'python'} (Permission denied)" in message
    assert "set [workers] python" in message
    # The core's own workers (no RunAs, no default_user) aren't checked: root runs anything.
    await check_worker_users([(spec("a"), code)], python=private / "python", default_user=None)


def test_a_probe_started_early_answers_for_its_own_paths_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edge run` starts the kernel probe before the core builds its sandbox: same answer.

    A probe of other paths is not taken for this sandbox's: the sandbox probes its own.
    """
    config = load_config(workers_config(tmp_path, 'sandbox = "auto"'))
    in_place = Sandbox.from_config(config)
    assert Sandbox.from_config(config, NamespaceProbe.for_config(config)) == in_place
    other = NamespaceProbe((str(tmp_path / "elsewhere"),))
    monkeypatch.setattr(
        "edge.workers.sandbox.probe_namespace", lambda _hidden: ("", "probed in place")
    )
    assert Sandbox.from_config(config, other).namespace_problem == "probed in place"
    other.result()
