"""Isolation: a worker reads its own secrets and nothing else, by any route.

A real core, real workers running the hostile `functions/probe.py` with the unmodified
greengrasssdk, Mosquitto and moto. Function "alpha" is granted secret A, "beta" secret B; alpha
tries everything to get B. Every test checks that B's value is in nothing alpha can output
(its answer, its log lines); the `env` fixture and the session's leak check then check every
log and CLI output for every value.

Already proven elsewhere, not repeated here:
- a process on the socket with a wrong token gets nothing, not even a Welcome
  (test_ipc.py `test_a_second_process_without_the_token_gets_nothing`,
  `test_wrong_token_is_refused_and_logged_once`; test_workers.py
  `test_a_stolen_connection_without_the_token_gets_nothing`);
- a token bound to another uid, or to a pid the caller doesn't descend from, is refused
  (test_ipc.py `test_peer_uid_must_match`, `test_peer_pid_must_be_the_worker_or_a_descendant`);
- an ungranted secret is a 403, an unknown one a 404 (test_workers.py
  `test_v1_code_reads_its_secrets_like_on_greengrass`);
- the socket is 0600 in a 0700 directory, a looser directory is tightened, not refused
  (test_ipc.py `test_socket_is_0600_in_a_0700_directory_and_removed_on_exit`,
  `test_a_looser_directory_is_tightened`); a state directory others can enter stops the core
  (test_core.py `test_loose_state_dir_is_refused`); the store is 0600 with no plaintext in the
  state dir (test_core.py `test_store_file_is_private_and_holds_no_plaintext`); a loose key or
  store file is refused by the loaders (tests/unit/test_keys.py, tests/unit/test_store.py).

Below the IPC is the OS: a worker without `RunAs` (and every worker of a non-root core) runs
as the core's own user. The core confines every worker with Landlock (edge/child/landlock.py)
before any function code runs, so that user's files are not the worker's: the tests at the end
have the probe go around the IPC to the store, the key, the config, the code others run, the
other processes' /proc and signals, and find every route shut.
"""

from __future__ import annotations

import hashlib
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

import edge
from edge.child.landlock import landlock_abi
from edge.fixtures.core import CoreProcess, Operator, edge_cli, secret_resource, write_config
from edge.fixtures.reference import write_v1_package
from edge.fixtures.services import Mosquitto, MotoServer
from edge.workers.sandbox import probe_namespace, probe_seccomp
from tests.support.env import Env, running_env
from tests.support.functions import (
    FUNCTIONS_DIR,
    build_package,
    code_of,
    function,
    function_arn,
    invoke,
)

pytestmark = pytest.mark.network
#: Whether this kernel confines workers (the core's default, `[workers] sandbox = "auto"`).
LANDLOCK = landlock_abi() > 0
#: The probe builds megabyte SecretIds, which the SDK copies into JSON: at V1's 16 MB it peaks
#: within a few hundred KB of the limit and is sometimes killed for memory, not refused.
PROBE_KB = 65536
needs_landlock = pytest.mark.skipif(not LANDLOCK, reason="this kernel has no Landlock to test")
#: How this core's workers enter their own mount namespace ('' where the kernel won't).
NAMESPACE = probe_namespace(())[0]
needs_namespace = pytest.mark.skipif(
    not NAMESPACE, reason="this kernel gives workers no private mount namespace to test"
)
needs_seccomp = pytest.mark.skipif(
    bool(probe_seccomp()), reason=f"no seccomp filter to test: {probe_seccomp()}"
)


@pytest.fixture
def probe(tmp_path: Path) -> dict[str, Any]:
    """The hostile probe (and app.py) packaged as a Code object."""
    path, digest = build_package(tmp_path / "probe.zip", ("app.py", "probe.py"))
    return {"Uri": path.as_uri(), "Sha256": digest}


def deploy_two(env: Env, probe: dict[str, Any], *, beta_handler: str = "app.function_handler"):
    """Deploy alpha (granted A, the probe) and beta (granted B, pinned); return both secrets."""
    arn_a, vid_a, value_a = env.create_secret("team-a/db")
    arn_b, vid_b, value_b = env.create_secret("team-b/db")
    functions = [
        function(
            "alpha", "probe.secret_ids", probe, policies=["a"], timeout=60, memory_kb=PROBE_KB
        ),
        function("beta", beta_handler, probe, policies=["b"], pinned=True),
    ]
    dep = env.operator.deploy(
        [secret_resource("a", arn_a), secret_resource("b", arn_b)], functions=functions
    )
    env.operator.wait_status(dep, "Success")
    return (arn_a, vid_a, value_a), (arn_b, vid_b, value_b)


def redeploy_alpha(
    env: Env,
    probe: dict[str, Any],
    handler: str,
    arns: tuple[str, str],
    beta_handler: str = "app.function_handler",
) -> None:
    """Point alpha at another probe handler, keeping everything else as deployed."""
    functions = [
        function("alpha", handler, probe, policies=["a"], timeout=60, memory_kb=PROBE_KB),
        function("beta", beta_handler, probe, policies=["b"], pinned=True),
    ]
    dep = env.operator.deploy(
        [secret_resource("a", arns[0]), secret_resource("b", arns[1])], functions=functions
    )
    env.operator.wait_status(dep, "Success")


def assert_not_shown(env: Env, value: str | bytes, *outputs: Any) -> None:
    """The value is in none of the outputs nor in the core's log (raw or as JSON text)."""
    text = value if isinstance(value, str) else value.hex()
    for output in outputs:
        assert text not in json.dumps(output), "another function's secret reached the worker"
    assert text not in env.core.log_text()


def test_secret_id_tricks_never_reach_another_functions_secret(
    env: Env, probe: dict[str, Any]
) -> None:
    """B's name, ARN, altered ARNs, paths, case, spaces, lookalikes, sizes, B's VersionId: no."""
    (arn_a, _, value_a), (arn_b, vid_b, value_b) = deploy_two(env, probe)
    partial_b = arn_b.rsplit("-", 1)[0]  # Secrets Manager accepts this; the core must not
    tricks = [
        {"SecretId": "team-b/db"},
        {"SecretId": arn_b},
        {"SecretId": partial_b},
        {"SecretId": partial_b + "-AAAAAA"},
        {"SecretId": arn_b.upper()},
        {"SecretId": arn_b.replace("us-east-1", "us-west-2")},
        {"SecretId": "team-a/../team-b/db"},
        {"SecretId": "./team-b/db"},
        {"SecretId": "team-b/db "},
        {"SecretId": " team-b/db"},
        {"SecretId": "team-b/db\n"},
        {"SecretId": "team-b/db\x00"},
        {"SecretId": "TEAM-B/DB"},
        {"SecretId": "team-b/DB"},
        {"SecretId": "team\u2010b/db"},  # a Unicode hyphen
        {"SecretId": "te\u0430m-b/db"},  # a Cyrillic a
        {"SecretId": "\uff54eam-b/db"},  # a fullwidth t (NFKC folds it to "t")
        {"SecretId": "team-b/db\u200b"},  # a zero-width space
        {"SecretId": "team-*"},
        {"SecretId": ".*"},
        {"SecretId": ""},
        {"Repeat": ["team-b/db", 20000]},  # 180 KB
        {"Repeat": ["team-b/db", 250000]},  # 2.2 MB: over the IPC frame limit
        {"SecretId": "team-b/db", "VersionStage": "AWSCURRENT"},
        {"SecretId": "team-a/db", "VersionStage": "../team-b/db"},
        # The SDK refuses VersionId itself ("not yet supported", as V1's did): straight to
        # the socket, with the probe's own token.
        {"Raw": True, "SecretId": "team-b/db", "VersionId": vid_b},
        {"Raw": True, "SecretId": "team-a/db", "VersionId": vid_b},  # A's name, B's version
        {"Raw": True, "SecretId": arn_a, "VersionId": vid_b},
        {"Raw": True, "SecretId": "team-b/db\x00"},
        {"Raw": True, "SecretId": ["team-b/db"]},
        {"Raw": True, "SecretId": {"Name": "team-b/db"}},
    ]
    control = {"SecretId": "team-a/db"}
    results = invoke(env, "alpha", {"attempts": [control, *tricks]})
    assert results[0]["ok"], results[0]  # the probe does read what it is granted
    assert results[0]["answer"]["SecretString"] == value_a
    for attempt, result in zip(tricks, results[1:], strict=True):
        assert not result["ok"], (str(attempt)[:80], result)
    errors = [r["error"] for r in results[1:]]
    # B by its exact name or ARN is a 403 naming the grant to add; the rest are unknown ids.
    assert "403" in errors[0]
    assert "403" in errors[1]
    codes = ("403", "404", "400", "413")
    odd = [e for e in errors if not any(f"code {c}" in e or f"({c})" in e for c in codes)]
    assert not odd, odd
    assert_not_shown(env, value_b, results)
    refusals = [e for e in env.core.events() if e.get("event") == "ipc.access_denied"]
    assert {e["function_arn"] for e in refusals} == {function_arn("alpha")}


def forged_token_results(env: Env, probe: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Alpha's probe tries every token it can make or find on the core's socket, for B.

    Returns what each attempt got, by token, and B's value. What holds with or without the
    sandbox is asserted here; the callers assert what depends on it.
    """
    (arn_a, _, _), (arn_b, _, value_b) = deploy_two(env, probe)
    redeploy_alpha(env, probe, "probe.raw_ipc", (arn_a, arn_b))
    invoke(env, "beta", {"SecretId": "team-b/db"})  # beta runs (pinned) and has connected
    operator_token = env.state_dir / "ipc" / "operator.token"
    results = invoke(
        env,
        "alpha",
        {"SecretId": "team-b/db", "operator_token_file": str(operator_token)},
    )
    assert results["own"]["ok"] is False
    assert "403" in results["own"]["error"]  # its own token works, and B isn't its to read
    for name, result in results.items():
        assert not result["ok"], (name, result)
    for name in ("random", "own-altered", "own-truncated"):
        assert "refused" in results[name]["error"], (name, results[name])
    assert "non-empty" in results["empty"]["error"]  # the client won't even send it
    problems = {e.get("problem") for e in env.core.events() if e.get("event") == "ipc.auth.refused"}
    assert "unknown or revoked token" in problems
    assert_not_shown(env, value_b, results)
    return results, value_b


@needs_landlock
def test_forged_tokens_are_refused_and_a_confined_worker_finds_none_to_lift(
    env: Env, probe: dict[str, Any]
) -> None:
    """Random, empty, altered tokens: no B; confined, the probe finds no other token to try.

    It can read neither beta's /proc/<pid>/environ nor the state directory (the pid binding
    that stops a lifted token is test_ipc's, and the next test's).
    """
    results, _ = forged_token_results(env, probe)
    assert [name for name in results if name.startswith("lifted-")] == [], results
    assert "unreadable" in results["operator-file"]["error"]
    assert "operator" not in results


def test_tokens_lifted_by_an_unconfined_worker_are_refused(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any, probe: dict[str, Any]
) -> None:
    """With `sandbox = "off"`, tokens read from beta's /proc and the state dir get no B either.

    The lifted tokens are refused because the probe is not the worker they were issued to,
    and the operator's token holds no grant.
    """
    with running_env(tmp_path, broker, moto, sm, extra='sandbox = "off"') as env:
        results, _ = forged_token_results(env, probe)
        lifted = [name for name in results if name.startswith("lifted-")]
        assert lifted, results
        for name in lifted:
            assert "refused" in results[name]["error"], (name, results[name])
        assert "403" in results["operator"]["error"]
        problems = {
            e.get("problem") for e in env.core.events() if e.get("event") == "ipc.auth.refused"
        }
        assert "peer process is not the worker or one of its descendants" in problems


def test_environment_argv_and_the_cores_proc_hold_no_secret(
    env: Env, probe: dict[str, Any]
) -> None:
    """The worker's env has its own token only; its argv and the core's /proc hold no value."""
    (arn_a, _, value_a), (arn_b, _, value_b) = deploy_two(env, probe)
    redeploy_alpha(env, probe, "probe.snoop", (arn_a, arn_b))
    invoke(env, "alpha", {})
    seen = invoke(env, "alpha", {})
    own = seen["own_environ"]
    assert own["MY_FUNCTION_ARN"] == function_arn("alpha")
    tokens = [k for k, v in own.items() if k == "AWS_CONTAINER_AUTHORIZATION_TOKEN" and v]
    assert tokens == ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    # Nothing of the core's own environment (its AWS credentials, its config) is passed on.
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(own)
    assert seen["core_pid"] == env.core.proc.pid
    assert "edge" in seen["core_cmdline"]
    for value in (value_a, value_b):
        assert_not_shown(env, value, seen)


def test_invoking_the_other_function_gives_only_what_it_returns(
    env: Env, probe: dict[str, Any]
) -> None:
    """lambda.invoke runs beta as beta: alpha gets beta's answer, never beta's grants.

    A function that returns its secret to whoever invokes it hands it over (its own choice,
    as on Greengrass); beta here returns only what beta reads for the SecretId it is sent,
    so alpha asking beta for A is refused (beta isn't granted A) and asking for B is beta's
    decision, shown by the answer coming back.
    """
    (arn_a, _, _), (arn_b, _, value_b) = deploy_two(env, probe, beta_handler="app.context_fields")
    redeploy_alpha(env, probe, "probe.invoke", (arn_a, arn_b), "app.context_fields")
    answer = invoke(env, "alpha", {"FunctionName": function_arn("beta"), "Payload": {"x": 1}})
    assert answer["FunctionError"] == ""
    assert json.loads(answer["Payload"])["function_name"] == "beta"
    assert_not_shown(env, value_b, answer)


def test_a_worker_cannot_use_another_cores_socket(
    env: Env, probe: dict[str, Any], tmp_path: Path
) -> None:
    """Core 2 runs the same function ARN with secret B; core 1's worker is refused there."""
    (arn_a, _, _), (arn_b, _, value_b) = deploy_two(env, probe)
    redeploy_alpha(env, probe, "probe.raw_ipc", (arn_a, arn_b))
    root2 = tmp_path / "core2"
    root2.mkdir()
    thing2 = f"core-{uuid.uuid4().hex[:8]}"
    config2 = write_config(
        root2 / "core.toml",
        thing_name=thing2,
        mqtt_url=env.broker.url,
        endpoint_url=env.moto.url,
        local_code_dirs=(tmp_path,),
    )
    assert edge_cli("init", "--config", str(config2)).returncode == 0
    core2 = CoreProcess(config=config2, log_path=root2 / "core.log")
    operator2 = Operator(port=env.broker.port, prefix="edge", thing=thing2)
    core2.start()
    try:
        core2.wait_for_event("mqtt.connected")
        operator2.connect()
        # On core 2, "alpha" (the very same ARN) *is* granted B.
        dep = operator2.deploy(
            [secret_resource("b", arn_b)],
            functions=[function("alpha", "app.function_handler", probe, policies=["b"])],
        )
        operator2.wait_status(dep, "Success")
        socket2 = root2 / "state" / "ipc" / "core.sock"
        assert stat.S_IMODE(socket2.stat().st_mode) == 0o600
        assert stat.S_IMODE(socket2.parent.stat().st_mode) == 0o700
        results = invoke(
            env, "alpha", {"SecretId": "team-b/db", "socket": str(socket2), "use": ["own"]}
        )
        assert not results["own"]["ok"]
        assert "refused" in results["own"]["error"]
        core2.wait_for_event("ipc.auth.refused", problem="unknown or revoked token")
        assert value_b not in core2.log_text()
    finally:
        operator2.close()
        if core2.proc is not None:
            assert core2.stop() == 0
    assert_not_shown(env, value_b, results)


@pytest.mark.parametrize(("target", "mode"), [("secrets.store", 0o644), ("core.key", 0o640)])
def test_a_loose_store_or_key_stops_the_core_saying_how_to_fix(
    env: Env, target: str, mode: int
) -> None:
    """`edge run` refuses a store or key others can read, with the chmod that fixes it."""
    arn, _, _ = env.create_secret("perm/check")
    env.operator.wait_status(env.operator.deploy([secret_resource("r", arn)]), "Success")
    assert stat.S_IMODE(env.store_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((env.state_dir / "core.key").stat().st_mode) == 0o600
    assert env.core.stop() == 0
    path = env.state_dir / target
    path.chmod(mode)
    result = edge_cli("run", "--config", str(env.config), timeout=30)
    assert result.returncode == 2
    assert f"chmod 0600 {path}" in result.stderr
    assert "Traceback" not in result.stderr
    path.chmod(0o600)
    env.core.start()
    env.core.wait_for_event("core.store_loaded", after=1)


def _pid_of(env: Env, name: str) -> int:
    started = [
        e
        for e in env.core.events()
        if e.get("event") == "worker.started" and e.get("function_arn") == function_arn(name)
    ]
    return int(started[-1]["pid"])


@needs_landlock
def test_a_confined_worker_cannot_go_around_the_ipc(env: Env, probe: dict[str, Any]) -> None:
    """The store, key, config and socket directory; code; other processes: every route shut."""
    (arn_a, _, value_a), (arn_b, _, value_b) = deploy_two(env, probe)
    redeploy_alpha(env, probe, "probe.disk", (arn_a, arn_b))
    invoke(env, "beta", {"SecretId": "team-b/db"})  # beta is up; its pid is in the log
    state = env.state_dir
    code = next((env.root / "functions").glob("*/probe.py")).parent
    runtime_dir = Path(edge.__file__).resolve().parent / "workers"
    site = Path(msgpack.__file__).resolve().parent.parent
    scratch = Path("/var/tmp") / f"edge-probe-{uuid.uuid4().hex}"
    hidden = [state / "secrets.store", state / "core.key", env.config, state / "ipc/operator.token"]
    planted = [
        code / "app.py",  # beta runs this very file
        code / "planted.py",
        runtime_dir / "planted.py",
        site / "planted.pth",  # would run in every later worker's interpreter
        state / "inbox" / "planted.json",
    ]
    core_pid, beta_pid = env.core.proc.pid, _pid_of(env, "beta")
    try:
        seen = invoke(
            env,
            "alpha",
            {
                "read": [*map(str, hidden), str(code / "probe.py"), "/etc/hostname"],
                "list": [str(state / "ipc")],
                "write": [*map(str, planted), str(scratch)],
                "remove": [str(state / "secrets.store"), str(code / "app.py")],
                "environ_of": [core_pid, beta_pid],
                "signal": [core_pid, beta_pid],
            },
        )
        assert scratch.read_text() == "# planted\n"  # the writable default works
    finally:
        scratch.unlink(missing_ok=True)
        for path in planted:
            if path.name.startswith("planted"):
                path.unlink(missing_ok=True)
    allowed = {"read " + str(code / "probe.py"), "read /etc/hostname", "write " + str(scratch)}
    allowed.add("list " + str(state / "ipc"))  # Landlock alone can't hide a listing
    refusals = ("Permission", "Operation not", "No such file", "Read-only")
    for attempt, result in seen.items():
        if attempt in allowed:
            assert result["ok"], (attempt, result)
        else:
            assert not result["ok"], (attempt, result)
            assert any(word in result["error"] for word in refusals), result
    assert (state / "secrets.store").exists()
    assert "planted" not in (code / "app.py").read_text()
    # Still served: the core lives, beta still reads its own secret through the IPC.
    assert invoke(env, "beta", {"SecretId": "team-b/db"})["SecretString"] == value_b
    env.core.wait_for_event("workers.sandbox", landlock_abi=landlock_abi())
    for value in (value_a, value_b):
        assert_not_shown(env, value, seen)


def test_a_package_cannot_stand_in_for_the_runtime(env: Env, tmp_path: Path) -> None:
    """A zip with its own edge/ and json.py: the core's runtime still loads, confined, first."""
    hijack = b"raise SystemExit('hijacked before the sandbox')\n"
    zipped = tmp_path / "hijack.zip"
    data = write_v1_package(
        zipped,
        {
            "app.py": (FUNCTIONS_DIR / "app.py").read_bytes(),
            "edge/__init__.py": hijack,
            "edge/child/__init__.py": hijack,
            "edge/child/runtime.py": hijack,
            "msgpack/__init__.py": hijack,
        },
    )
    code = {"Uri": zipped.as_uri(), "Sha256": hashlib.sha256(data).hexdigest()}
    arn, _, value = env.create_secret("team-c/db")
    dep = env.operator.deploy(
        [secret_resource("c", arn)],
        functions=[function("gamma", "app.function_handler", code, policies=["c"])],
    )
    env.operator.wait_status(dep, "Success")
    assert invoke(env, "gamma", {"SecretId": "team-c/db"})["SecretString"] == value
    assert "hijacked" not in env.core.log_text()


@needs_namespace
def test_a_function_can_neither_see_nor_chmod_the_cores_files(
    env: Env, probe: dict[str, Any]
) -> None:
    """A chmod 0755 of the state dir, 0644 of the key and of the store: all fail, unchanged.

    The worker sees an empty read-only mount over the state directory (only the IPC socket is
    bound back into it) and an empty read-only file over the config: the store isn't there to
    name, and no cover's mode can change.
    """
    (arn_a, _, value_a), (arn_b, _, value_b) = deploy_two(env, probe)
    redeploy_alpha(env, probe, "probe.modes", (arn_a, arn_b))
    state, key, store = env.state_dir, env.state_dir / "core.key", env.store_path
    before = {p: stat.S_IMODE(p.stat().st_mode) for p in (state, key, store, env.config)}
    assert before[state] == 0o700
    assert before[key] == before[store] == 0o600
    seen = invoke(
        env,
        "alpha",
        {
            "chmod": [
                [str(state), 0o755],
                [str(key), 0o644],
                [str(store), 0o644],
                [str(env.config), 0o644],
                [str(state / "ipc"), 0o755],
                [str(state / "ipc" / "core.sock"), 0o666],
            ],
            "stat": [str(store), str(key), str(state / "audit")],
            "list": [str(state), str(state / "ipc")],
        },
    )
    gone, sealed = "FileNotFoundError: No such file", "OSError: Read-only file system"
    expected = {
        f"chmod 755 {state}": sealed,
        f"chmod 644 {key}": gone,
        f"chmod 644 {store}": gone,
        f"chmod 644 {env.config}": sealed,
        f"chmod 755 {state / 'ipc'}": sealed,
        f"chmod 666 {state / 'ipc' / 'core.sock'}": sealed,
        f"stat {store}": gone,
        f"stat {key}": gone,
        f"stat {state / 'audit'}": gone,
    }
    assert {k: r.get("error", "")[: len(expected.get(k, ""))] for k, r in seen.items()} == {
        **expected,
        f"list {state}": "",
        f"list {state / 'ipc'}": "",
    }, seen
    # What it sees of the state directory: the socket it talks to the core through, no more.
    assert seen["list " + str(state)] == {"ok": True, "value": "['ipc']"}
    assert seen["list " + str(state / "ipc")] == {"ok": True, "value": "['core.sock']"}
    after = {p: stat.S_IMODE(p.stat().st_mode) for p in (state, key, store, env.config)}
    assert after == before
    # The core goes on: a restart loads the store (a loose one would be refused).
    assert env.core.stop() == 0
    env.core.start()
    env.core.wait_for_event("core.store_loaded", after=1)
    env.core.wait_for_event("workers.sandbox", namespace=NAMESPACE)
    for value in (value_a, value_b):
        assert_not_shown(env, value, seen)


@needs_seccomp
def test_a_function_can_set_no_setuid_or_setgid_bit_anywhere(
    env: Env, probe: dict[str, Any]
) -> None:
    """A chmod 4755 / 2755 of a file it made, or of a root-owned program: EPERM each.

    A worker of a root core without RunAs is uid 0 without capabilities, so it owns root's
    files: without the seccomp filter it could make any root-owned program setuid.
    """
    arn, _, _ = env.create_secret("team-s/db")
    fn = function("suid", "probe.modes", probe, policies=["s"], timeout=30)
    env.operator.wait_status(
        env.operator.deploy([secret_resource("s", arn)], functions=[fn]), "Success"
    )
    # In /var/tmp: /tmp holds this test's state dir, so only its other subtrees are writable.
    own = Path("/var/tmp") / f"edge-suid-{uuid.uuid4().hex}"
    program = Path("/var/tmp") / f"edge-suid-{uuid.uuid4().hex}"
    program.write_bytes(Path("/bin/true").read_bytes())
    program.chmod(0o755)
    try:
        seen = invoke(
            env,
            "suid",
            {"own_setuid": str(own), "chmod": [[str(program), 0o4755], [str(program), 0o2755]]},
        )
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (own, program)}
    finally:
        own.unlink(missing_ok=True)
        program.unlink(missing_ok=True)
    assert len(seen) == 5, seen
    for attempt, result in seen.items():
        assert not result["ok"], (attempt, result)
        assert "Operation not permitted" in result["error"], (attempt, result)
    assert modes == {own: stat.S_IMODE(modes[own]) & 0o777, program: 0o755}
    assert not modes[own] & (stat.S_ISUID | stat.S_ISGID)


def test_unmodified_v1_code_still_copies_and_chmods_its_own_files(env: Env, tmp_path: Path) -> None:
    """shutil.copy, copy2, copytree, chmod 0644 / 0755 and chown of its own files all work."""
    code = code_of(tmp_path / "app.zip")
    arn, _, _ = env.create_secret("team-v/db")
    fn = function("copier", "app.copy_files", code, policies=["v"])
    env.operator.wait_status(
        env.operator.deploy([secret_resource("v", arn)], functions=[fn]), "Success"
    )
    answer = invoke(env, "copier", {"text": "v1 data"})
    assert answer == {"copy": "0o644", "copy2": "0o755", "text": "v1 data"}
