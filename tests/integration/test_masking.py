"""Masking end to end: a real function prints and raises its secrets every usual way.

A PEM key and a JSON credential are read through the unmodified greengrasssdk by a function
that prints them (whole, line by line, `repr`, `json.dumps`, field by field) or raises with
them. Neither value, nor any masked line or string of it, may reach the core's log or the real
`edge invoke`'s stdout or stderr, whether the function is invoked by the operator or by
another function.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.fixtures.core import secret_resource
from edge.redaction import MASK, MIN_JSON_STRING_LENGTH, is_framing
from tests.support.env import Env
from tests.support.functions import code_of, function, function_arn, invoke
from tests.support.tls import pem_of

pytestmark = pytest.mark.network

#: How long a printed line may take to reach the core's log after the invocation returned.
LOG_WAIT_SECONDS = 20


def _create(env: Env, name: str, value: str) -> str:
    """Create a string secret (the session's leak check registers it); return its ARN."""
    env.values.append(value)
    arn: str = env.sm.create_secret(Name=name, SecretString=value)["ARN"]
    return arn


def _forbidden(value: str) -> set[str]:
    """Every piece of a secret that must not be seen: itself, lines, JSON strings, escapes."""
    pieces = {value, *(line.strip() for line in value.splitlines())}
    if value.startswith("{"):
        for field in json.loads(value).values():
            if len(field) >= MIN_JSON_STRING_LENGTH:
                pieces |= {field, *(line.strip() for line in field.splitlines())}
    pieces = {p for p in pieces if len(p) >= MIN_JSON_STRING_LENGTH and not is_framing(p)}
    return pieces | {json.dumps(p)[1:-1] for p in pieces} | {repr(p)[1:-1] for p in pieces}


def _deploy(env: Env, tmp_path: Path) -> tuple[str, str, str, str]:
    """Deploy the printer (both secrets) and a caller of it; return the secrets and their ids."""
    pem = pem_of().decode()
    credential = json.dumps(
        {
            "username": "admin",
            "password": f"pw-{secrets.token_urlsafe(18)}",
            "host": f"db-{secrets.token_hex(6)}.internal",
            "private_key": pem_of().decode(),
        }
    )
    code = code_of(tmp_path / "printer.zip", ("printer.py",))
    resources = [
        secret_resource("pem", _create(env, "masking/pem", pem)),
        secret_resource("json", _create(env, "masking/json", credential)),
    ]
    functions = [
        function("printer", "printer.print_secret", code, policies=["pem", "json"]),
        function("caller", "printer.relay", code),
    ]
    env.operator.wait_status(env.operator.deploy(resources, functions=functions), "Success")
    return pem, credential, "masking/pem", "masking/json"


def _worker_lines(env: Env, stream: str) -> list[str]:
    return [
        str(e.get("line"))
        for e in env.core.events()
        if e.get("event") == "worker.output" and e.get("stream") == stream
    ]


def _wait_line(env: Env, stream: str, seen: Callable[[list[str]], bool]) -> list[str]:
    """Wait until the worker's output lines on `stream` satisfy `seen`; return them."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while time.monotonic() < deadline:
        lines = _worker_lines(env, stream)
        if seen(lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"the core's log has no such {stream} line: {lines[-20:]}")


def _print(env: Env, secret_id: str, how: str) -> list[str]:
    """Have the printer print a secret `how`; return every stdout line logged so far."""
    assert invoke(env, "printer", {"SecretId": secret_id, "how": how}) == {"printed": how}
    return _wait_line(env, "stdout", lambda lines: f"done {how}" in lines)


def _assert_nowhere(env: Env, *values: str) -> None:
    output = env.all_output()
    for value in values:
        for piece in _forbidden(value):
            assert piece not in output, "a secret's value, line or string reached the output"


def test_a_pem_printed_whole_by_line_repr_or_json_never_reaches_the_log(
    env: Env, tmp_path: Path
) -> None:
    """Each body line of a printed PEM is logged as ****; its BEGIN/END lines stay readable."""
    pem, _, pem_id, _ = _deploy(env, tmp_path)
    body = len(pem.splitlines()) - 2
    for how in ("print", "lines", "repr", "json.dumps"):
        lines = _print(env, pem_id, how)
    assert lines.count("-----BEGIN PRIVATE KEY-----") == 2  # print and lines
    assert lines.count(MASK) >= 2 * body
    assert f"'{MASK}'" in lines  # repr: one line, masked whole
    assert f'"{MASK}"' in lines  # json.dumps
    _assert_nowhere(env, pem)


def test_a_json_secret_printed_as_repr_json_or_field_by_field_never_reaches_the_log(
    env: Env, tmp_path: Path
) -> None:
    """Its password, host and embedded key are masked however the document is printed."""
    _, credential, _, json_id = _deploy(env, tmp_path)
    for how in ("print", "repr", "json.dumps", "fields"):
        lines = _print(env, json_id, how)
    assert "password = ****" in lines
    assert "username = admin" in lines  # a string under the limit is not a secret by itself
    assert any(line.startswith("{'username': 'admin', 'password': '****'") for line in lines)
    assert "private_key = -----BEGIN PRIVATE KEY-----" in lines  # then its lines, masked
    _assert_nowhere(env, credential)


def test_a_raised_secret_is_masked_in_the_log_in_edge_invoke_and_for_a_calling_function(
    env: Env, tmp_path: Path
) -> None:
    """The traceback, the error `edge invoke` prints and the error another function gets."""
    pem, credential, pem_id, json_id = _deploy(env, tmp_path)
    traced = {
        pem_id: ("ValueError: could not use -----BEGIN PRIVATE KEY-----", MASK),
        json_id: (f"ValueError: could not use {MASK}", None),
    }
    for secret_id, (message, body) in traced.items():
        stderr = invoke(env, "printer", {"SecretId": secret_id, "how": "raise"}, expect_error=True)
        error = json.loads(stderr.split("failed (Handled): ", 1)[1])
        assert error["errorMessage"] == f"could not use {MASK}"
        assert error["errorType"] == "ValueError"
        # The traceback the worker printed: its message line, then (PEM) each masked line.
        lines = _wait_line(env, "stderr", lambda lines, m=message: m in lines)
        assert body is None or lines[lines.index(message) + 1] == body
    # Another function invoking the printer gets the error masked as well, and prints it.
    event = {
        "FunctionName": function_arn("printer"),
        "Payload": {"SecretId": pem_id, "how": "raise"},
    }
    answer = invoke(env, "caller", event)
    env.cli_output.append(json.dumps(answer))  # the caller's answer: checked below too
    assert answer["FunctionError"] == "Handled"
    assert answer["Payload"]["errorMessage"] == f"could not use {MASK}"
    relayed = _wait_line(env, "stdout", lambda lines: any(x.startswith("got ") for x in lines))
    assert f'"errorMessage": "could not use {MASK}"' in relayed[-1]
    _assert_nowhere(env, pem, credential)
