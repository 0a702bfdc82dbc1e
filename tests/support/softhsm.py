"""A SoftHSM2 token of the test's own, in a temporary directory with its own `SOFTHSM2_CONF`.

SoftHSM reads its config once per process, at C_Initialize, so a test module shares one token.
`SOFTHSM2_CONF` is set in this process (for python-pkcs11) and so in every `edge` subprocess
the tests start. The user PIN is registered with the leak check: it must appear in no output.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.leaks import LEAKS

MODULES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
)
INSTALL_HINT = "SoftHSM2 is not installed: run `bash .ci/install-softhsm` (CI's .ci/run does)"


@dataclass(frozen=True)
class Token:
    """A SoftHSM2 token: where its module is, its label and its user PIN."""

    module: Path
    label: str
    pin: str
    root: Path

    def uri(self, obj: str, *, pin: str | None = None, extra: str = "") -> str:
        """A pkcs11: URI for `obj` in this token, with `pin` (default: the right one) inline."""
        pin_part = f"?pin-value={self.pin if pin is None else pin}" if pin != "" else ""
        return f"pkcs11:token={self.label};object={obj}{extra}{pin_part}"


@contextlib.contextmanager
def softhsm_token(root: Path) -> Iterator[Token]:
    """Initialise a new, empty token under `root`; restore `SOFTHSM2_CONF` afterwards."""
    module = next((m for m in MODULES if m.exists()), None)
    if shutil.which("softhsm2-util") is None or module is None:
        pytest.fail(INSTALL_HINT)
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    label = f"edge-{uuid.uuid4().hex[:8]}"
    pin = secrets.token_hex(8)
    # The PIN is a credential like any secret value: it must appear in no log or output.
    LEAKS.add_secret(pin, "PKCS#11 user PIN")
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin,
         "--so-pin", secrets.token_hex(8)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield Token(module=module, label=label, pin=pin, root=root)
    finally:
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved
