"""The publisher's token bucket and the [mqtt] pacing keys of the control plane's config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.cloud.config import Pacing, parse_cloud_config
from edge.cloud.publisher import TokenBucket
from edge.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_at_once_then_one_token_per_interval() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, 3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    # Owed tokens queue up: the 4th waits one interval, the 5th two.
    assert bucket.take() == pytest.approx(0.1)
    assert bucket.take() == pytest.approx(0.2)


def test_no_sequence_of_takes_beats_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(50.0, 5, clock=clock)
    sent_at: list[float] = []
    for _ in range(500):
        wait = bucket.take()
        sent_at.append(clock.now + wait)
        clock.now += 0.001  # a caller far faster than the rate
    for start in range(len(sent_at) - 100):
        window = [t for t in sent_at[start:] if t < sent_at[start] + 1.0]
        assert len(window) <= 5 + 50


def test_an_idle_bucket_saves_up_no_more_than_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(100.0, 4, clock=clock)
    clock.now += 3600.0
    waits = [bucket.take() for _ in range(6)]
    assert waits[:4] == [0.0] * 4
    assert waits[4] > 0.0


def test_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0.0, 1)


def _config(mqtt: str) -> Pacing:
    raw = {
        "mqtt": {"url": "mqtt://127.0.0.1:1883", **tomllib.loads(mqtt)},
        "aws": {"region": "us-east-1"},
    }
    return parse_cloud_config(raw, path=Path("/tmp/cloud.toml")).pacing


def test_pacing_keys_are_read_and_default_to_iot_core_limits() -> None:
    assert _config("") == Pacing(rate=100.0, burst=20, queue_limit=10_000)
    assert _config("publish_rate = 2.5\npublish_burst = 1\npublish_queue_limit = 7") == Pacing(
        rate=2.5, burst=1, queue_limit=7
    )


def test_a_bad_pacing_key_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="publish_rate"):
        _config("publish_rate = 0")
    with pytest.raises(ConfigError, match="publish_burst"):
        _config('publish_burst = "many"')
