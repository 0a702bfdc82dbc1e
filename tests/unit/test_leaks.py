"""The whole-session leak check can fail: a registered value written anywhere is reported."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.leaks import MIN_PATTERN_BYTES, LeakRegistry, value_forms

REPO = Path(__file__).resolve().parents[2]


def fresh_value() -> str:
    """A value of this test only (never registered in the session's own registry)."""
    return f"leak-probe-{secrets.token_urlsafe(18)}"


def test_a_value_written_into_a_scanned_file_is_reported_by_file_and_id(tmp_path: Path) -> None:
    """A string value inside a log line, deep in a state dir, is found; clean files are not."""
    value = fresh_value()
    registry = LeakRegistry()
    registry.add_root(tmp_path)
    registry.add_secret(value, "app/db-password")
    (tmp_path / "state" / "ipc").mkdir(parents=True)
    leaky = tmp_path / "state" / "ipc" / "core.log"
    leaky.write_text('{"event": "oops", "line": "pw=' + value + 'trailing"}\n')
    (tmp_path / "clean.log").write_text('{"event": "fine", "line": "****"}\n')
    result = registry.scan()
    assert [(h.source, h.secret_id) for h in result.hits] == [(str(leaky), "app/db-password")]
    assert result.files == 2
    report = "\n".join(registry.report(result))
    assert "app/db-password" in report
    assert str(leaky) in report
    assert value not in report


def test_binary_values_are_found_raw_in_base64_and_in_hex(tmp_path: Path) -> None:
    """A binary secret leaks as raw bytes (NULs and newlines included), base64 or hex."""
    raw = b"\x00\n" + secrets.token_bytes(24)
    registry = LeakRegistry()
    registry.add_root(tmp_path)
    registry.add_secret(raw, "app/cert")
    (tmp_path / "raw.bin").write_bytes(b"header" + raw + b"footer")
    (tmp_path / "b64.log").write_text("SecretBinary=" + base64.b64encode(raw).decode())
    (tmp_path / "url.log").write_text(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    (tmp_path / "hex.log").write_text(raw.hex())
    (tmp_path / "clean.log").write_text(base64.b64encode(secrets.token_bytes(24)).decode())
    hits = {Path(h.source).name for h in registry.scan().hits}
    assert hits == {"raw.bin", "b64.log", "url.log", "hex.log"}


def test_captured_output_is_attributed_to_its_source(tmp_path: Path) -> None:
    """Output that never reached a file (a CLI's stdout) is searched and named by its source."""
    value = fresh_value()
    registry = LeakRegistry()
    registry.add_output("edge secrets list (before the root)", "nothing here\n")
    registry.add_root(tmp_path)
    registry.add_secret(value, "twilio/token")
    registry.add_output("edge invoke", f"result: {value}\n")
    registry.add_output("edge secrets list", "ResourceId: db\n")
    result = registry.scan()
    assert [(h.source, h.secret_id) for h in result.hits] == [
        ("captured output of edge invoke", "twilio/token")
    ]


def test_json_escaped_and_non_ascii_values_are_found(tmp_path: Path) -> None:
    """A value with quotes or non-ASCII letters is found as JSON logs escape it."""
    value = 'pässwörd "quoted" ' + secrets.token_hex(6)
    registry = LeakRegistry()
    registry.add_root(tmp_path)
    registry.add_secret(value, "unicode")
    import json  # noqa: PLC0415 - only here

    (tmp_path / "log.json").write_text(json.dumps({"line": value}))
    assert [h.secret_id for h in registry.scan().hits] == ["unicode"]


def test_exempt_files_and_short_values_are_said_not_searched(tmp_path: Path) -> None:
    """An exempted file is skipped; values too short to search are counted, not hidden."""
    value = fresh_value()
    registry = LeakRegistry()
    registry.add_root(tmp_path)
    registry.add_secret(value, "input")
    registry.add_secret("x" * (MIN_PATTERN_BYTES - 1), "short")
    assert value_forms("x" * (MIN_PATTERN_BYTES - 1)) == set()
    own_input = tmp_path / "secret.json"
    own_input.write_text(value)
    registry.exempt(own_input, "the test's own input file")
    result = registry.scan()
    assert result.hits == ()
    assert result.short_values == 1


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_leaking_session_fails_even_when_every_test_passes(
    tmp_path: Path, workers: list[str]
) -> None:
    """Run pytest with the plugin on passing tests that leak: exit status 1, ids, no values.

    Also under pytest-xdist (as `make test` runs), where each worker scans its own files and
    the controller reports and fails.
    """
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(
        textwrap.dedent(
            """
            from tests.support.leaks import LeakCheckPlugin, LeakRegistry

            def pytest_configure(config):
                config.pluginmanager.register(LeakCheckPlugin(LeakRegistry()), "leaks")
            """
        )
    )
    (project / "test_leaky.py").write_text(
        textwrap.dedent(
            """
            import os

            def registry(request):
                return request.config.pluginmanager.get_plugin("leaks").registry

            def test_writes_a_log(request, tmp_path):
                reg = registry(request)
                reg.add_root(tmp_path)
                reg.add_secret(os.environ["PROBE_VALUE"], "probe/in-file")
                (tmp_path / "core.log").write_text("line " + os.environ["PROBE_VALUE"])

            def test_prints(request):
                reg = registry(request)
                reg.add_secret(os.environ["PROBE_PRINTED"], "probe/printed")
                print("the password is", os.environ["PROBE_PRINTED"])
            """
        )
    )
    in_file, printed = fresh_value(), fresh_value()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'inner'}",
            *workers,
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=project,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PROBE_VALUE": in_file,
            "PROBE_PRINTED": printed,
        },
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "2 passed" in output
    assert "SECRET VALUES LEAKED" in output
    assert "core.log: value of secret 'probe/in-file'" in output
    assert "test_prints (Captured stdout call): value of secret 'probe/printed'" in output
    assert in_file not in output
    assert printed not in output
