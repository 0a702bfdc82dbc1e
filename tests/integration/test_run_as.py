"""Workers of another user: RunAs and `[workers] default_user` on a root core.

A real core running as root, real workers as `nobody`, Mosquitto and moto. The user must be
able to execute `[workers] python` and read the function's code: a deployment checks that and
fails saying what to set; a worker that still can't start (the interpreter's directory closed
since) says the same in the core's log and in the invocation's error.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.fixtures.core import secret_resource
from edge.fixtures.services import Mosquitto, MotoServer, free_port
from tests.support.env import Env
from tests.support.faults import fetch_table, running_core
from tests.support.functions import code_of, function, function_arn, invoke
from tests.support.leaks import LEAKS
from tests.support.metrics import scrape, value
from tests.support.users import checkout_reachable, python_or_skip, shared_directory

pytestmark = pytest.mark.network

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="RunAs and default_user apply only when the core runs as root"
)
NOBODY = pwd.getpwnam("nobody")


@contextlib.contextmanager
def core_with(
    tmp_path: Path,
    broker: Mosquitto,
    moto: MotoServer,
    sm: Any,
    *,
    workers: str,
    code_dir: str,
    metrics: bool = False,
) -> Iterator[Env]:
    """A running core whose config has this [workers] table and [core] code_dir.

    With `metrics`, it also serves /metrics (`tests.support.metrics.scrape` reads it).
    """

    def set_code_dir(state_dir: Path) -> None:
        config = state_dir.parent / "core.toml"
        text = config.read_text()
        where = 'state_dir = "state"'
        text = text.replace(where, f'{where}\ncode_dir = "{code_dir}"', 1)
        text = text.replace("[workers]\n", f"[workers]\n{workers}\n", 1)
        if metrics:
            port = free_port()
            text += f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
            (tmp_path / "metrics.url").write_text(f"http://127.0.0.1:{port}/metrics")
        config.write_text(text)

    with running_core(
        tmp_path,
        broker=broker,
        moto=moto,
        sm=sm,
        endpoint_url=moto.url,
        fetch=fetch_table(),
        before_init=set_code_dir,
    ) as env:
        yield env


@contextlib.contextmanager
def nobody_core(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any, *, metrics: bool = False
) -> Iterator[Env]:
    """A running root core whose workers run as nobody, code in a directory nobody can read."""
    python = python_or_skip(NOBODY)
    with (
        shared_directory("edge-code-") as code_dir,
        core_with(
            tmp_path,
            broker,
            moto,
            sm,
            workers=f'python = "{python}"\ndefault_user = "nobody"',
            code_dir=str(code_dir),
            metrics=metrics,
        ) as env,
    ):
        if metrics:
            env.core.wait_for_event("metrics.listening")
        yield env


@pytest.fixture
def reachable_checkout() -> Iterator[None]:
    """Workers of another user import `edge` from this checkout: let them reach it."""
    with checkout_reachable():
        yield


@needs_root
@pytest.mark.usefixtures("reachable_checkout")
def test_a_root_core_runs_functions_without_run_as_as_its_default_user(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    """`[workers] default_user = "nobody"`: a function without RunAs runs as nobody, no groups.

    It reaches the core over the socket the core hands it (nobody can't enter the socket
    directory) and reads its secret. The code lives in a directory nobody can read, and the
    interpreter is one nobody can run: the deployment-time check passes.
    """
    with nobody_core(tmp_path, broker, moto, sm) as env:
        env.core.wait_for_event("workers.default_user", user="nobody")
        arn, _, value = env.create_secret("default-user")
        fn = function("who", "app.whoami", code_of(tmp_path / "app.zip"), policies=["r"])
        env.operator.wait_status(
            env.operator.deploy([secret_resource("r", arn)], functions=[fn]), "Success"
        )
        answer = invoke(env, "who", {"SecretId": "default-user"})
        assert (answer["uid"], answer["gid"], answer["groups"]) == (
            NOBODY.pw_uid,
            NOBODY.pw_gid,
            [],
        )
        assert answer["inherited_ipc"] is True
        assert answer["secret"] == value


@needs_root
def test_a_deployment_whose_user_cannot_run_the_interpreter_fails_saying_what_to_set(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    """RunAs nobody with [workers] python in a 0700 directory: Failure naming both and the key.

    Nothing of the deployment is applied: the function that ran before still answers.
    """
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python"
    python.symlink_to(sys.executable)
    with core_with(
        tmp_path, broker, moto, sm, workers=f'python = "{python}"', code_dir="functions"
    ) as env:
        code = code_of(tmp_path / "app.zip")
        env.operator.wait_status(
            env.operator.deploy(functions=[function("ctx", "app.context_fields", code)]),
            "Success",
        )
        run_as = {"Uid": NOBODY.pw_uid, "Gid": NOBODY.pw_gid}
        fn = function("ctx", "app.context_fields", code, run_as=run_as)
        failed = env.operator.final_status(env.operator.deploy(functions=[fn]))
        assert failed["DeploymentStatus"] == "Failure"
        message = failed["ErrorMessage"]
        assert function_arn("ctx") in message
        assert f"RunAs uid {NOBODY.pw_uid} (nobody) gid {NOBODY.pw_gid}" in message
        assert f"can't execute the interpreter {python} (Permission denied)" in message
        assert "set [workers] python to an interpreter that user can execute" in message
        assert invoke(env, "ctx", {})["function_name"] == "ctx"


@needs_root
@pytest.mark.usefixtures("reachable_checkout")
@pytest.mark.parametrize(
    "case", [("interpreter", "auto"), ("interpreter", "off"), ("code", "off")], ids="-".join
)
def test_a_run_as_worker_that_cannot_start_names_the_user_and_what_to_change(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any, case: tuple[str, str]
) -> None:
    """A directory closed (0700) after a deployment: the worker's start fails clearly.

    The invocation's error and the core's `worker.start_failed` name the function, the RunAs
    user, and the interpreter with `[workers] python`, or the code with `[core] code_dir`; not
    only "Permission denied". With the sandbox the worker starts as root and finds out once it
    is its user; without, the core starts it as that user and the exec (or entering the code)
    fails. Opened again, the function answers.
    """
    closed, sandbox = case
    usable = python_or_skip(NOBODY)
    with shared_directory("edge-runas-") as scratch:
        home = scratch / "home"  # a home such as pyenv's, under /root
        home.mkdir(mode=0o755)
        python = home / "python"
        python.symlink_to(usable)
        code_dir = scratch / "functions"
        code_dir.mkdir(mode=0o755)
        gate, expected = {
            "interpreter": (
                home,
                (
                    f"can't execute the interpreter {python} (Permission denied): ",
                    "set [workers] python to an interpreter that user can execute",
                ),
            ),
            "code": (
                code_dir,
                (
                    f"can't read the function's code ({code_dir}/",  # its unpacked directory
                    ": Permission denied): make [core] code_dir and the directories above",
                ),
            ),
        }[closed]
        with core_with(
            tmp_path,
            broker,
            moto,
            sm,
            workers=f'python = "{python}"\nsandbox = "{sandbox}"',
            code_dir=str(code_dir),
        ) as env:
            run_as = {"Uid": NOBODY.pw_uid, "Gid": NOBODY.pw_gid}
            fn = function("ctx", "app.context_fields", code_of(tmp_path / "app.zip"), run_as=run_as)
            env.operator.wait_status(env.operator.deploy(functions=[fn]), "Success")
            gate.chmod(0o700)
            said = invoke(env, "ctx", {}, expect_error=True)
            logged = env.core.wait_for_event("worker.start_failed")
            user = f"RunAs uid {NOBODY.pw_uid} (nobody) gid {NOBODY.pw_gid}"
            for message in (said, logged["error"]):
                assert function_arn("ctx") in message
                assert f"runs as {user}, who can't" in message
                for part in expected:
                    assert part in message
            assert (logged["user"], logged["python"]) == (user, str(python))
            gate.chmod(0o755)
            assert invoke(env, "ctx", {})["function_name"] == "ctx"


@needs_root
@pytest.mark.usefixtures("reachable_checkout")
def test_a_pinned_worker_of_another_user_reaches_the_core_after_idling(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    """The socket the core hands a RunAs worker waits for its first call, however late.

    A worker that calls the core only after the Hello deadline of strangers' connections
    (5 s) still reads its secret, and the core logs no `ipc.hello.timeout` for it.
    """
    with nobody_core(tmp_path, broker, moto, sm) as env:
        arn, _, value = env.create_secret("late-reader")
        code = code_of(tmp_path / "app.zip")
        fns = [
            function("idle", "app.sleep", code, pinned=True, timeout=30),
            function("who", "app.whoami", code, policies=["r"], pinned=True),
        ]
        dep = env.operator.deploy([secret_resource("r", arn)], functions=fns)
        env.operator.wait_status(dep, "Success")
        # The pinned workers started with the deployment; this one's socket idles as long.
        assert invoke(env, "idle", {"seconds": 6}) == {"slept": 6}
        assert invoke(env, "who", {"SecretId": "late-reader"})["secret"] == value
        assert env.core.count("ipc.hello.timeout") == 0


# --- the cache of answers of a worker of another user ------------------------------------------

V1_READS = r'edge_ipc_requests_total\{op="secretsmanager.get_secret_value_v1",result="ok"\}'


def _cached_functions(tmp_path: Path) -> list[dict[str, Any]]:
    package = code_of(tmp_path / "cached.zip", ("cached.py", "typed.py"))
    return [
        function("reader", "cached.read", package, policies=["db"], pinned=True),
        function("forks", "cached.fork_and_exec", package, policies=["db"], pinned=True),
        function("typed", "typed.calls", package, policies=["db"]),
    ]


def _rotate(env: Env, arn: str) -> str:
    """Put a new AWSCURRENT version in Secrets Manager; its value."""
    new = f"rotated-{len(env.values)}-value"
    env.values.append(new)
    LEAKS.add_secret(new, arn)
    env.sm.put_secret_value(SecretId=arn, SecretString=new)
    return new


def _rotate_and_refresh(env: Env, arn: str) -> str:
    """Rotate, and have the `typed` function refresh it (the core does once in 30 s at most)."""
    new = _rotate(env, arn)
    (result,) = invoke(env, "typed", {"calls": [{"SecretId": "cached/db", "Refresh": True}]})
    assert result["ok"], result
    assert result["value"]["SecretString"] == new
    return new


def _last(events: list[dict[str, Any]], name: str) -> int:
    return max(i for i, e in enumerate(events) if e.get("event") == name)


@needs_root
@pytest.mark.usefixtures("reachable_checkout")
def test_a_worker_of_another_user_answers_repeated_reads_from_its_cache(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    """A `default_user` worker caches over the watch socket the core hands it.

    Its repeats never reach the core; a refresh reaches its cache before it is reported. A
    process it forks has no connection of its own and doesn't cache, a program it runs holds
    none of the sockets the core handed it, and neither disturbs the worker's own watch.
    """
    with nobody_core(tmp_path, broker, moto, sm, metrics=True) as env:
        arn, _, first = env.create_secret("cached/db")
        resources = [secret_resource("db", arn)]
        dep = env.operator.deploy(resources, functions=_cached_functions(tmp_path))
        env.operator.wait_status(dep, "Success")
        read = {"SecretId": "cached/db"}
        assert invoke(env, "reader", read)["values"] == [first]  # the first read starts the watch
        warm = invoke(env, "reader", {**read, "times": 0, "wait_cached": True})
        assert (warm["uid"], warm["cached"]) == (NOBODY.pw_uid, True)
        assert value(scrape(env), "edge_ipc_cache_watches") == 1

        before = value(scrape(env), V1_READS)
        answer = invoke(env, "reader", {**read, "times": 200})
        assert answer["values"] == [first]
        # One read reached the core (the first since the cache was on); 199 never left.
        assert value(scrape(env), V1_READS) - before == 1

        second = _rotate_and_refresh(env, arn)
        events = env.core.events()
        invalidated = _last(events, "caches.invalidated")
        assert invalidated < _last(events, "refresh.rotated")
        assert (events[invalidated]["watches"], events[invalidated]["late"]) == (1, 0)
        assert invoke(env, "reader", {**read, "times": 5})["values"] == [second]

        # Forking before the worker's first call, then once it caches: the child never gets
        # the worker's sockets, and a program run then or later holds none of them.
        for went in (invoke(env, "forks", read), invoke(env, "forks", {**read, "wait_cached": 1})):
            assert went["handed"] == {"EDGE_IPC_FD": True, "EDGE_IPC_WATCH_FD": True}
            assert "can't be made again" in went["forked"]["message"], went["forked"]
            assert went["forked"]["cached"] is False
            assert went["executed"] == {"EDGE_IPC_FD": False, "EDGE_IPC_WATCH_FD": False}
            assert went["again"] == second
        assert (went["cached_before"], went["cached"]) == (True, True)

        # A deployment reaches both caches before its Success.
        third = _rotate(env, arn)
        dep = env.operator.deploy(resources, functions=_cached_functions(tmp_path))
        env.operator.wait_status(dep, "Success")
        events = env.core.events()
        invalidated = _last(events, "caches.invalidated")
        assert invalidated < _last(events, "deploy.complete")
        assert (events[invalidated]["watches"], events[invalidated]["late"]) == (2, 0)
        assert invoke(env, "reader", read)["values"] == [third]
        assert invoke(env, "forks", read)["again"] == third
        assert value(scrape(env), "edge_ipc_cache_unacknowledged_total") == 0


@needs_root
@pytest.mark.usefixtures("reachable_checkout")
def test_a_frozen_worker_of_another_user_is_killed_before_the_change_is_reported(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    """Its watch goes over a handed socket, so the core knows its pid only from the manager.

    That pid is the one killed when its cache doesn't acknowledge, before the refresh is
    reported; the pinned function starts again and reads the new value.
    """
    with nobody_core(tmp_path, broker, moto, sm) as env:
        arn, _, first = env.create_secret("cached/db")
        resources = [secret_resource("db", arn)]
        dep = env.operator.deploy(resources, functions=_cached_functions(tmp_path))
        env.operator.wait_status(dep, "Success")
        read = {"SecretId": "cached/db"}
        assert invoke(env, "reader", read)["values"] == [first]
        warm = invoke(env, "reader", {**read, "wait_cached": True, "times": 2})
        assert (warm["values"], warm["cached"], warm["uid"]) == ([first], True, NOBODY.pw_uid)
        frozen = warm["pid"]

        os.kill(frozen, signal.SIGSTOP)
        second = _rotate_and_refresh(env, arn)
        events = env.core.events()
        invalidated = _last(events, "caches.invalidated")
        assert (events[invalidated]["watches"], events[invalidated]["late"]) == (1, 1)
        killed = _last(events, "worker.killed")
        assert killed < _last(events, "refresh.rotated")
        assert events[killed]["function_arn"] == function_arn("reader")
        with pytest.raises(ProcessLookupError):  # dead and reaped before the refresh was reported
            os.kill(frozen, 0)
        after = invoke(env, "reader", read)
        assert after["values"] == [second]
        assert after["pid"] != frozen


@needs_root
@pytest.mark.usefixtures("reachable_checkout")
def test_a_program_a_function_runs_holds_none_of_the_cores_connections(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    """A function that never imports the SDK runs a program: it holds no socket of the core's.

    The control channel and the IPC sockets are closed on exec before the function's code runs,
    so a program run with every inheritable descriptor (`os.system`'s) can't speak to the core.
    """
    with nobody_core(tmp_path, broker, moto, sm) as env:
        code = code_of(tmp_path / "bare.zip", ("bare.py",))
        fn = function("bare", "bare.held_descriptors", code)
        env.operator.wait_status(env.operator.deploy(functions=[fn]), "Success")
        answer = invoke(env, "bare", {})
        assert answer["handed"] == ["EDGE_CONTROL_FD", "EDGE_IPC_FD", "EDGE_IPC_WATCH_FD"]
        assert answer["executed"] == dict.fromkeys(answer["handed"], False)
