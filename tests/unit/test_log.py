"""Log redaction: no secret value survives into a rendered log line."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from edge import cli
from edge.cloud import cli as cloud_cli
from edge.log import configure_logging, get_logger, set_group_file
from edge.redaction import (
    MASK,
    MIN_JSON_STRING_LENGTH,
    MIN_LINE_LENGTH,
    REDACTOR,
    SecretRedactor,
    mask_payload,
)
from tests.support.tls import pem_of


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


def _pem() -> str:
    """A fresh PKCS#8 PEM private key, newline-terminated as every PEM writer ends it."""
    return pem_of().decode()


def _redactor(*values: str | bytes) -> SecretRedactor:
    redactor = SecretRedactor()
    redactor.update(values)
    return redactor


def test_each_line_of_a_multi_line_value_is_masked_but_not_its_framing() -> None:
    """A PEM printed line by line shows its BEGIN/END lines and `****` for every body line."""
    pem = _pem()
    redactor = _redactor(pem)
    lines = pem.splitlines()
    masked = [redactor.mask(line) for line in lines]
    assert masked[0] == "-----BEGIN PRIVATE KEY-----"
    assert masked[-1] == "-----END PRIVATE KEY-----"
    assert masked[1:-1] == [MASK] * (len(lines) - 2)
    # Within other text, with the CRLF a Windows-made PEM carries, and stripped of it.
    assert redactor.mask(f"key line: {lines[1]}\r") == f"key line: {MASK}\r"
    # The whole value in one piece is masked as one.
    assert redactor.mask(f"[{pem}]") == f"[{MASK}]"


def test_short_lines_and_json_punctuation_of_a_multi_line_value_are_not_masked() -> None:
    """Lines under MIN_LINE_LENGTH and lines of JSON punctuation stay readable elsewhere."""
    long_line = "x" * MIN_LINE_LENGTH
    short_line = "y" * (MIN_LINE_LENGTH - 1)
    redactor = _redactor(f"{{\n  {long_line}\n{short_line}\n  ]}},\n}}")
    assert redactor.mask(f"a {long_line} b") == f"a {MASK} b"
    assert redactor.mask(f"a {short_line} b") == f"a {short_line} b"
    assert redactor.mask("  ]},") == "  ]},"
    assert redactor.mask("----------------------------") == "----------------------------"


def test_each_string_inside_a_json_value_is_masked_wherever_it_shows() -> None:
    """Re-serialised, repr'd or printed alone, a JSON secret's strings (>= 8) are masked.

    Keys, and strings shorter than MIN_JSON_STRING_LENGTH, are left alone.
    """
    password, host = 's3cr\u00e9t-"pass"\\word', "db.internal.example"
    short = "z" * (MIN_JSON_STRING_LENGTH - 1)
    document = {"username": short, "connection": {"password": password, "hosts": [host]}}
    redactor = _redactor(json.dumps(document, indent=2))
    for printed in (
        json.dumps(document),
        json.dumps(document, ensure_ascii=False),
        json.dumps(document, separators=(",", ":")),
        repr(document),
        str(document["connection"]),
        f"password={password} host={host}",
    ):
        masked = redactor.mask(printed)
        assert password not in masked
        assert json.dumps(password)[1:-1] not in masked
        assert repr(password)[1:-1] not in masked
        assert host not in masked
    shown = redactor.mask(f"user={short} password={password}")
    assert shown == f"user={short} password={MASK}"
    assert redactor.mask("connection lost") == "connection lost"


_PRINTERS: dict[str, Callable[[str], str]] = {
    "json.dumps": json.dumps,
    "json.dumps unescaped": lambda v: json.dumps(v, ensure_ascii=False),
    "json.dumps inner": lambda v: json.dumps(v)[1:-1],
    "repr": repr,
    "repr inner": lambda v: repr(v)[1:-1],
    "ascii": ascii,
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64 url-safe": lambda v: base64.urlsafe_b64encode(v.encode()).decode(),
    "base64 unpadded": lambda v: base64.b64encode(v.encode()).decode().rstrip("="),
}


@pytest.mark.parametrize("printer", sorted(_PRINTERS))
def test_escaped_repr_and_base64_forms_of_a_value_are_masked(printer: str) -> None:
    """json.dumps (both ensure_ascii), repr, ascii and base64 of a value print no part of it."""
    value = "line one of it\nsecond 'line' \"quoted\" \\ caf\u00e9 \u2603 tab\there"
    pem = _pem()
    document = json.dumps({"token": "tok-\u00e9\n-abcdefgh"})
    redactor = _redactor(value, pem, document)
    show = _PRINTERS[printer]
    for printed in (value, pem, "tok-\u00e9\n-abcdefgh", *pem.splitlines()[1:-1]):
        masked = redactor.mask(f"<{show(printed)}>")
        assert masked in {f"<{MASK}>", f'<"{MASK}">', f"<'{MASK}'>", f"<{MASK}=>", f"<{MASK}==>"}


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="*"),
        min_size=4,
        max_size=60,
    )
)
def test_no_printed_form_of_any_value_survives(value: str) -> None:
    """Whatever the value (quotes, backslashes, newlines, any script), its forms are masked."""
    redactor = _redactor(value)
    for show in _PRINTERS.values():
        masked = redactor.mask(show(value))
        assert show(value) not in masked or not show(value)


def test_binary_values_are_masked_as_printed_hex_base64_and_decoded_lines() -> None:
    """A bytes secret: print(value) (its repr), .hex(), base64 and, if text, its lines."""
    binary = b"\x00\x01binary-secret\xff'\n"
    pem = _pem().encode()
    redactor = _redactor(binary, pem)
    assert redactor.mask(str(binary)) == f'b"{MASK}"'  # repr picks " around a '

    assert redactor.mask(binary.hex()) == MASK
    assert redactor.mask(base64.urlsafe_b64encode(binary).decode()) == MASK
    assert redactor.mask(pem.decode().splitlines()[1]) == MASK
    assert redactor.mask(repr(pem)) == f"b'{MASK}'"


def test_a_function_error_document_is_masked_and_stays_json() -> None:
    """A raised error's message and trace lose the value; it still parses; clean ones unchanged."""
    pem = _pem()
    REDACTOR.update([pem, "hunter2-password"])
    try:
        error = {
            "errorMessage": f"bad key {pem} for hunter2-password",
            "errorType": "ValueError",
            "stackTrace": ['  File "app.py", line 3\n    raise ValueError(hunter2-password)\n'],
        }
        payload = json.dumps(error).encode()
        masked = mask_payload(payload)
        clean = json.dumps({"errorMessage": "nothing secret"}).encode()
        assert mask_payload(clean) is clean
        assert mask_payload(b"not json: hunter2-password") == f"not json: {MASK}".encode()
    finally:
        REDACTOR.update([])
    answer = json.loads(masked)
    assert answer["errorMessage"] == f"bad key {MASK} for {MASK}"
    assert "hunter2-password" not in answer["stackTrace"][0]
    assert pem.splitlines()[1].encode() not in masked


_LINES = st.sampled_from(["line-one-of-many", "line-two-of-many", "short", "another-line-x"])
_VALUES = st.lists(_LINES, min_size=1, max_size=3).map("\n".join)


@given(st.lists(st.lists(_VALUES, max_size=4), min_size=1, max_size=5))
def test_successive_updates_mask_exactly_as_a_fresh_redactor(steps: list[list[str]]) -> None:
    """Values that come, go and share lines: after each update, as if built from scratch."""
    redactor = SecretRedactor()
    probes = {f"<{v}> <{line}>" for step in steps for v in step for line in v.split("\n")}
    for values in steps:
        redactor.update(values)
        fresh = _redactor(*values)
        for probe in probes:
            assert redactor.mask(probe) == fresh.mask(probe)


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


def test_library_tracebacks_through_stdlib_logging_are_masked() -> None:
    """A library's logger.exception: its message and the traceback's lines lose the value."""
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    pem = _pem()

    def load() -> None:
        raise ValueError("cannot load " + pem)

    REDACTOR.update([pem])
    try:
        try:
            load()
        except ValueError:
            logging.getLogger("somelibrary").exception("failed with %s", pem.splitlines()[1])
    finally:
        REDACTOR.update([])
    text = stream.getvalue()
    assert f"failed with {MASK}" in text
    assert f"ValueError: cannot load {MASK}" in text
    assert not any(line in text for line in pem.splitlines()[1:-1])


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
    monkeypatch.setattr(cloud_cli, "main", lambda argv: handed.append(list(argv)) or 0)
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


def test_a_groups_log_file_copies_masked_lines_within_its_space(tmp_path: Path) -> None:
    """Lines go to stderr and a 0600 file; two files never hold more than the space; None stops.

    The copy holds what stderr shows, masked, without colour codes, and rotates to `.1` at half
    the space, so a chatty core can't fill the disk.
    """
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    REDACTOR.update(["file-secret-value-123"])
    path = tmp_path / "logs" / "core.log"
    try:
        set_group_file(path, 4096)
        log = get_logger("test")
        for n in range(200):
            log.info("file.line", n=n, detail="file-secret-value-123 and padding " * 2)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        rotated = path.with_name("core.log.1")
        assert path.stat().st_size + rotated.stat().st_size <= 4096
        tail = path.read_text()
        assert '"n": 199' in tail
        assert tail in stream.getvalue()  # the same lines as stderr, nothing of its own
        assert "file-secret-value-123" not in tail + rotated.read_text()
        set_group_file(None)
        log.info("file.after")
        assert "file.after" in stream.getvalue()
        assert "file.after" not in path.read_text()
    finally:
        set_group_file(None)
        REDACTOR.update([])
