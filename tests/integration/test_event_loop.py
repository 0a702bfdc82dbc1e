# SPDX-License-Identifier: Apache-2.0
"""`[core] event_loop`: the core runs on uvloop by default, on asyncio's loop when told to."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.fixtures.core import CoreProcess, edge_cli, write_config
from edge.fixtures.services import Mosquitto, MotoServer


def started_core(tmp_path: Path, broker: Mosquitto, moto: MotoServer, core_keys: str) -> str:
    """Start a core with `core_keys` added to [core]; return the loop it says it runs on."""
    config = write_config(
        tmp_path / "core.toml", thing_name="loop-core", mqtt_url=broker.url, endpoint_url=moto.url
    )
    text = config.read_text().replace('state_dir = "state"\n', f'state_dir = "state"\n{core_keys}')
    config.write_text(text)
    init = edge_cli("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    core = CoreProcess(config=config, log_path=tmp_path / "core.log")
    core.start()
    try:
        loop = core.wait_for_event("core.event_loop", timeout=30)["loop"]
        # The core does its work on that loop: it gets as far as listening for deployments.
        core.wait_for_event("mqtt.connected", timeout=30)
    finally:
        core.stop()
    return str(loop)


def test_the_core_runs_on_uvloop_by_default(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer
) -> None:
    pytest.importorskip("uvloop", reason="uvloop ships wheels for Linux x86_64 and aarch64 only")
    assert started_core(tmp_path, broker, moto, "").startswith("uvloop ")


def test_event_loop_asyncio_runs_the_core_on_asyncios_own_loop(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer
) -> None:
    assert started_core(tmp_path, broker, moto, 'event_loop = "asyncio"\n') == "asyncio"


def test_an_unknown_event_loop_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "core.toml",
        thing_name="loop-core",
        mqtt_url="mqtt://127.0.0.1:1",
        endpoint_url="http://127.0.0.1:1",
    )
    config.write_text(config.read_text().replace("[core]\n", '[core]\nevent_loop = "trio"\n'))
    result = edge_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "event_loop" in result.stderr
    assert "trio" in result.stderr
