"""Reading a real core's Prometheus endpoint in tests."""

from __future__ import annotations

import re
import urllib.request

from tests.support.env import Env


def scrape(env: Env) -> dict[str, float]:
    """Read /metrics; return every sample as {'name{labels}': value}."""
    url = (env.root / "metrics.url").read_text()
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback, ours
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    env.core.log_path.parent.joinpath("metrics.txt").write_text(text)  # scanned for leaks
    return samples


def value(samples: dict[str, float], pattern: str) -> float:
    """Sum of the samples whose 'name{labels}' matches `pattern`."""
    return sum(v for k, v in samples.items() if re.fullmatch(pattern, k))
