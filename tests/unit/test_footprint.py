# SPDX-License-Identifier: Apache-2.0
"""What the core and the CLI load into memory: only what the configuration asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def loaded_modules(*imports: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `imports`."""
    probe = f"import sys, {', '.join(imports)}; print('\\n'.join(sys.modules))"
    return set(run_python(probe).stdout.split())


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter in the repository; its output, as text."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )


def test_the_core_loads_no_metrics_server_unless_metrics_listen_is_set() -> None:
    """prometheus_client and aiohttp's server (~13 MB) come with `[metrics] listen` only."""
    loaded = loaded_modules("edge.cli", "edge.core", "edge.metrics")
    assert "edge.metrics" in loaded
    assert sorted(m for m in loaded if m.startswith(("prometheus_client", "aiohttp.web"))) == []


def test_edge_invoke_status_and_secrets_audit_load_none_of_the_core() -> None:
    """Commands that scripts call in loops start without the AWS SDK, MQTT or the workers.

    `edge status` loads the store's modules only when no core runs to answer it.
    """
    loaded = loaded_modules("edge.cli", "edge.cli_invoke", "edge.cli_status", "edge.audit")
    heavy = ("botocore", "aiobotocore", "aiohttp", "aiomqtt", "edge.core", "edge.workers")
    assert sorted(m for m in loaded if m.startswith(heavy)) == []


def test_edge_secrets_list_loads_the_store_and_the_key_and_nothing_of_the_core(
    tmp_path: Path,
) -> None:
    """`edge secrets list` reads the store with the core key: no core, no network, no x509.

    The command runs for real, on a store `edge init` prepared; the edge modules it loads are
    named one by one, so that a new import on its path shows here.
    """
    config = tmp_path / "core.toml"
    config.write_text(
        '[core]\nthing_name = "t"\nstate_dir = "state"\n\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n\n[aws]\nregion = "us-east-1"\n'
    )
    config.chmod(0o600)
    edge = [sys.executable, "-m", "edge"]
    subprocess.run([*edge, "init", "--config", str(config)], check=True, timeout=60, cwd=REPO)
    probe = (
        "import sys; from edge.cli import main; "
        f"code = main(['secrets', 'list', '--json', '--config', {str(config)!r}]); "
        "print('\\n'.join(['exit', str(code), *sys.modules]), file=sys.stderr)"
    )
    out = run_python(probe)
    assert json.loads(out.stdout)["Secrets"] == []
    exit_line, code, *modules = out.stderr.split()
    assert (exit_line, code) == ("exit", "0")
    assert sorted(m for m in modules if m.startswith("edge")) == [
        "edge",
        "edge.cli",
        "edge.config",
        "edge.configfile",
        "edge.errors",
        "edge.eventloop",
        "edge.fsutil",
        "edge.log",
        "edge.redaction",
        "edge.secrets",
        "edge.secrets.contents",
        "edge.secrets.keyref",
        "edge.secrets.keys",
        "edge.secrets.pkcs11",
        "edge.secrets.sealing",
        "edge.secrets.store",
        "edge.secrets.storefile",
        "edge.settings",
        "edge.statedir",
    ]
    heavy = ("botocore", "aiobotocore", "aiohttp", "aiomqtt", "cryptography.x509", "pkcs11")
    assert sorted(m for m in modules if m.startswith(heavy)) == []


def test_the_crypto_child_loads_no_asyncio_and_no_logging() -> None:
    """The child a restarting core waits for is lean: msgpack, cryptography, the store code."""
    loaded = loaded_modules("edge.secrets.sealer")
    assert "cryptography" in loaded
    heavy = ("asyncio", "structlog", "edge.log", "edge.core", "edge.config", "botocore")
    assert sorted(m for m in loaded if m.startswith(heavy)) == []


def test_the_core_s_modules_import_no_cryptography() -> None:
    """`edge run`'s modules, the crypto's core side included, leave `cryptography` out."""
    loaded = loaded_modules("edge.cli", "edge.core", "edge.secrets.seal_process")
    assert "edge.core" in loaded
    assert sorted(m for m in loaded if m.startswith("cryptography")) == []
