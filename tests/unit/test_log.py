"""Log redaction: no secret value survives into a rendered log line."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from edge import cli
from edge.log import MASK, REDACTOR, SecretRedactor, configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo configure_logging after each test: later tests expect structlog's defaults."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_masks_strings_bytes_and_their_base64_in_nested_fields() -> None:
    """String values, binary values (raw and base64) and nested containers are all masked."""
    redactor = SecretRedactor()
    binary = b"\x00\x01binary-secret\xff"
    redactor.update(["hunter2-password", binary])
    event = {
        "event": "x",
        "error": "login failed for hunter2-password",
        "nested": {"list": ["a", f"b64 {base64.b64encode(binary).decode()}"]},
        "SecretString": "anything",
    }
    out = redactor(None, "info", event)
    rendered = json.dumps(out)
    assert "hunter2-password" not in rendered
    assert base64.b64encode(binary).decode() not in rendered
    assert out["SecretString"] == MASK
    assert out["error"] == f"login failed for {MASK}"


def test_update_replaces_the_masked_set() -> None:
    """After a rotation only the current values are masked; new ones are masked at once."""
    redactor = SecretRedactor()
    redactor.update(["first-value"])
    assert redactor.mask("first-value") == MASK
    redactor.update(["second-value"])
    assert redactor.mask("first-value second-value") == f"first-value {MASK}"


@given(st.lists(st.text(min_size=4, max_size=40), min_size=1, max_size=5), st.text(max_size=40))
def test_no_value_survives_in_any_text(values: list[str], filler: str) -> None:
    """Whatever the values and surrounding text, none appears in the masked output."""
    redactor = SecretRedactor()
    redactor.update(values)
    text = filler.join(values) + filler
    masked = redactor.mask(text)
    for value in values:
        # A value may only reappear if the mask itself and the filler happen to spell it.
        assert value not in masked or value in MASK + filler + MASK


def test_configured_logger_renders_json_without_values() -> None:
    """The process-wide logger masks values held by REDACTOR in its JSON output."""
    stream = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=stream)
    REDACTOR.update(["super-secret-token"])
    try:
        get_logger("test").info("auth.failed", detail="token super-secret-token rejected")
    finally:
        REDACTOR.update([])
    line = json.loads(stream.getvalue().strip())
    assert line["event"] == "auth.failed"
    assert line["detail"] == f"token {MASK} rejected"


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _log_one(fmt: str, stream: io.StringIO) -> str:
    configure_logging(level="info", fmt=fmt, stream=stream)
    REDACTOR.update(["super-secret-token"])
    try:
        get_logger("test").info("auth.failed", detail="token super-secret-token rejected")
    finally:
        REDACTOR.update([])
    return stream.getvalue()


def test_auto_format_writes_json_lines_off_a_terminal() -> None:
    """To a file or a pipe, "auto" (the default) writes one JSON object per line."""
    line = json.loads(_log_one("auto", io.StringIO()).strip())
    assert line["event"] == "auth.failed"


def test_auto_format_writes_coloured_console_lines_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a terminal, "auto" means human-readable lines with ANSI colours."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    text = _log_one("auto", _Terminal())
    assert "auth.failed" in text
    assert "\x1b[" in text
    assert not text.lstrip().startswith("{")


def test_console_format_has_no_colour_off_a_terminal_or_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Colours only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[" not in _log_one("console", io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in _log_one("console", _Terminal())


@pytest.mark.parametrize("fmt", ["auto", "console", "json"])
@pytest.mark.parametrize("terminal", [False, True])
def test_every_format_keeps_the_redaction(fmt: str, *, terminal: bool) -> None:
    """Whatever the format and the stream, a value the core holds is printed as ****."""
    text = _log_one(fmt, _Terminal() if terminal else io.StringIO())
    assert "super-secret-token" not in text
    assert f"token {MASK} rejected" in text


def test_console_renders_exceptions_as_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """No rich traceback with local variables (a local can hold a secret value)."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = _Terminal()
    configure_logging(fmt="console", stream=stream)

    def login(password: str) -> None:
        raise ValueError("boom " + str(len(password)))

    try:
        # A local of the failing frame, whose whole value no source line spells out.
        login("hunter2-local-" + "variable".upper())
    except ValueError:
        get_logger("test").exception("it.failed")
    assert "ValueError: boom" in stream.getvalue()
    assert "hunter2-local-VARIABLE" not in stream.getvalue()


def _config(tmp_path: Path, log: str) -> Path:
    path = tmp_path / "core.toml"
    path.write_text(f'[core]\nthing_name = "c"\n[aws]\nregion = "us-east-1"\n{log}')
    return path


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """What `edge` passes to configure_logging, instead of configuring."""
    calls: list[dict[str, str]] = []
    monkeypatch.setattr(cli, "configure_logging", lambda **kw: calls.append(kw))
    return calls


def test_cli_options_override_the_config_before_or_after_the_command(
    tmp_path: Path, configured: list[dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-format/--log-level win over [log], wherever they are on the command line."""
    config = str(_config(tmp_path, '[log]\nlevel = "error"\nformat = "json"\n'))
    assert cli.main(["init", "--config", config]) == 0
    assert cli.main(["--log-format", "console", "secrets", "list", "--config", config]) == 0
    assert cli.main(["secrets", "list", "--config", config, "--log-level", "debug"]) == 0
    assert configured == [
        {"level": "error", "fmt": "json"},
        {"level": "error", "fmt": "console"},
        {"level": "debug", "fmt": "json"},
    ]
    assert "No secrets in the store." in capsys.readouterr().out


def test_config_without_log_section_means_auto(
    tmp_path: Path, configured: list[dict[str, str]]
) -> None:
    """With no [log] table the core picks console on a terminal, JSON lines otherwise."""
    assert cli.main(["init", "--config", str(_config(tmp_path, ""))]) == 0
    assert configured == [{"level": "info", "fmt": "auto"}]


def test_global_options_reach_edge_cloud_and_are_taken_out_of_its_arguments(
    monkeypatch: pytest.MonkeyPatch, configured: list[dict[str, str]]
) -> None:
    """`edge --log-level debug cloud …` configures logging and hands the rest to edge cloud."""
    handed: list[list[str]] = []
    monkeypatch.setattr(cli, "cloud_main", lambda argv: handed.append(list(argv)) or 0)
    argv = ["--log-format", "json", "cloud", "--config", "c.toml", "list-groups"]
    assert cli.main([*argv, "--log-level", "warning"]) == 0
    assert handed == [["--config", "c.toml", "list-groups"]]
    assert configured == [{"level": "warning", "fmt": "json"}]


def test_an_unknown_log_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """The usage error names the choices; the exit status is 2."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--log-format", "xml", "secrets", "list", "--config", "x.toml"])
    assert exc.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
