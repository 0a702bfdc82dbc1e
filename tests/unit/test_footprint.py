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


def run_edge_cloud(config: Path, *argv: str) -> tuple[int, str, str, set[str]]:
    """Run `edge cloud --config CONFIG ARGV` in a fresh interpreter, as `python -m edge` does.

    Returns its exit status, stdout, stderr and the modules it left loaded.
    """
    probe = (
        "import sys; from edge.cli import main\n"
        "try:\n"
        f"    code = main(['cloud', '--config', {str(config)!r}, *{list(argv)!r}])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('\\n'.join(['--modules--', str(code), *sys.modules]), file=sys.stderr)"
    )
    out = run_python(probe)
    err, _, listing = out.stderr.partition("--modules--\n")
    code, *modules = listing.split()
    return int(code), out.stdout, err, set(modules)


def test_edge_cloud_database_commands_load_no_aws_sdk_and_no_mqtt(tmp_path: Path) -> None:
    """`edge cloud` commands that only use the database start without the AWS SDK or MQTT.

    Scripts run them in loops, and botocore, aiobotocore and aiohttp alone take about half a
    second to import. Each command runs for real on a SQLite control plane; the broker and S3
    named in the configuration are never asked.
    """
    config = tmp_path / "cloud.toml"
    config.write_text(
        '[cloud]\ndatabase = "cloud.db"\nsigning_key = "keys/signing.pem"\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n[aws]\nregion = "us-east-1"\n'
    )
    heavy = ("botocore", "aiobotocore", "aiohttp", "aiomqtt", "edge.cloud.serve")
    code, out, err, modules = run_edge_cloud(config, "init")
    assert code == 0, err
    assert Path(out.strip()) == tmp_path / "keys" / "signing.pem.pub"
    assert sorted(m for m in modules if m.startswith(heavy)) == []
    code, out, err, modules = run_edge_cloud(config, "create-group", "--name", "g")
    assert code == 0, err
    group_id = json.loads(out)["Id"]
    assert "sqlalchemy" in modules
    assert sorted(m for m in modules if m.startswith(heavy)) == []
    code, out, err, modules = run_edge_cloud(config, "list-groups")
    assert code == 0, err
    assert [g["Id"] for g in json.loads(out)["Groups"]] == [group_id]
    assert sorted(m for m in modules if m.startswith((*heavy, "cryptography"))) == []


def test_edge_cloud_help_and_a_wrong_argument_load_no_database_code(tmp_path: Path) -> None:
    """`edge cloud --help` and a mistyped command answer without SQLAlchemy or the AWS SDK."""
    config = tmp_path / "cloud.toml"
    heavy = ("sqlalchemy", "botocore", "aiobotocore", "aiohttp", "aiomqtt", "cryptography")
    code, out, _, modules = run_edge_cloud(config, "--help")
    assert code == 0
    assert "create-group" in out
    assert sorted(m for m in modules if m.startswith(heavy)) == []
    code, _, err, modules = run_edge_cloud(config, "create-group")
    assert code == 2
    assert err.startswith("edge: error: the following arguments are required: --name")
    assert sorted(m for m in modules if m.startswith(heavy)) == []
