"""`edge.mqtt.imports`: paho gets `urllib.request` lazily, and nothing it does with it changes.

Each case runs in a fresh interpreter: which modules are loaded is the whole point, and this
process has long loaded them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Stands in for PySocks, which isn't installed here (it would make every core of the suite
#: load `urllib.request`): what paho's proxy lookup reads of it, with PySocks's values.
FAKE_SOCKS = """
SOCKS4, SOCKS5, HTTP = 1, 2, 3


def get_default_proxy():
    return None
"""


def run(code: str, *, path: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run `code` in a fresh interpreter (with `path` first on sys.path); its stdout."""
    variables = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    if path is not None:
        variables["PYTHONPATH"] = str(path)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**variables, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_paho_gets_a_module_whose_code_runs_on_first_use() -> None:
    out = run(
        """
        import sys
        import edge.mqtt.imports as imports
        module = sys.modules["urllib.request"]
        print(type(module).__name__, "http.client" in sys.modules, "email" in sys.modules)
        print(not any(type(f).__name__ == "_LazyFinder" for f in sys.meta_path))
        # paho's own use: the module it holds loads, and answers.
        held = imports.paho.urllib.request
        print(held.proxy_bypass("broker.example") in (True, False, 0, 1))
        print(type(module).__name__, "http.client" in sys.modules, module is held)
        from urllib.request import urlopen
        print(callable(urlopen))
        """
    )
    assert out.splitlines() == [
        "_LazyModule False False",  # made, not run
        "True",  # the finder is gone
        "True",
        "module True True",  # run in place: one module object for everyone
        "True",
    ]


def test_another_import_of_the_module_gets_it_whole() -> None:
    out = run(
        """
        import sys
        import edge.mqtt.link
        import urllib.request
        print(type(urllib.request).__name__, "http.client" in sys.modules)
        print(urllib.request.Request("http://example.com").host)
        """
    )
    assert out.splitlines() == ["module True", "example.com"]


def test_a_module_imported_before_is_left_as_it_is() -> None:
    out = run(
        """
        import sys
        import urllib.request
        before = sys.modules["urllib.request"]
        import edge.mqtt.imports as imports
        print(imports.paho.urllib.request is before, type(before).__name__)
        """
    )
    assert out == "True module"


#: What paho's lookup gives for `mqtt_proxy` (PySocks's HTTP is 3).
PROXY = "{'proxy_type': 3, 'proxy_addr': 'proxy.example', 'proxy_port': 3128}"


@pytest.mark.parametrize(
    ("variables", "proxy"),
    [
        ({"mqtt_proxy": "http://proxy.example:3128"}, PROXY),
        ({"mqtt_proxy": "http://proxy.example:3128", "no_proxy": "broker.example"}, "None"),
        ({}, "None"),
    ],
)
def test_with_pysocks_paho_still_reads_the_proxy_variables(
    tmp_path: Path, variables: dict[str, str], proxy: str
) -> None:
    """With PySocks, the module is loaded at once, and paho's lookup works as without us."""
    (tmp_path / "socks.py").write_text(FAKE_SOCKS)
    out = run(
        """
        import sys
        import edge.mqtt.imports as imports
        from paho.mqtt.enums import CallbackAPIVersion
        print(type(sys.modules["urllib.request"]).__name__, "http.client" in sys.modules)
        client = imports.paho.Client(CallbackAPIVersion.VERSION2)
        client.connect_async("broker.example", 8883)
        print(client._get_proxy())
        """,
        path=tmp_path,
        env=variables,
    )
    assert out.splitlines() == ["module True", proxy]
