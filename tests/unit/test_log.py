"""Log redaction: no secret value survives into a rendered log line."""

from __future__ import annotations

import base64
import io
import json

from hypothesis import given
from hypothesis import strategies as st

from edge.log import MASK, REDACTOR, SecretRedactor, configure_logging, get_logger


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
