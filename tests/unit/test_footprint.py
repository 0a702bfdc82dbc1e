# SPDX-License-Identifier: Apache-2.0
"""What the core and the CLI load into memory: only what the configuration asks for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def loaded_modules(*imports: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `imports`."""
    probe = f"import sys, {', '.join(imports)}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    return set(out.stdout.split())


def test_the_core_loads_no_metrics_server_unless_metrics_listen_is_set() -> None:
    """prometheus_client and aiohttp's server (~13 MB) come with `[metrics] listen` only."""
    loaded = loaded_modules("edge.cli", "edge.core", "edge.metrics")
    assert "edge.metrics" in loaded
    assert sorted(m for m in loaded if m.startswith(("prometheus_client", "aiohttp.web"))) == []


def test_edge_invoke_and_edge_secrets_audit_load_none_of_the_core() -> None:
    """Commands that scripts call in loops start without the AWS SDK, MQTT or the workers."""
    loaded = loaded_modules("edge.cli", "edge.cli_invoke", "edge.audit")
    heavy = ("botocore", "aiobotocore", "aiohttp", "aiomqtt", "edge.core", "edge.workers")
    assert sorted(m for m in loaded if m.startswith(heavy)) == []
