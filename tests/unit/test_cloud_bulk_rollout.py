"""The rollout policy: paced starts, an exponential ramp-up, the abort rule, settings checked."""

from __future__ import annotations

import collections
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.cloud.bulk.rollout import (
    NAMES,
    AbortRule,
    Counts,
    RampUp,
    RolloutPolicy,
    RolloutSettings,
    current_rate,
    parse_settings,
)
from edge.cloud.errors import RolloutSettingsError

SPELLED = {name: f"--{name}" for name in NAMES}


def run(policy: RolloutPolicy, total: int, seconds: float) -> list[float]:
    """Start `total` deployments as the policy allows; return each start's time (fake clock)."""
    now, starts = 0.0, []
    while len(starts) < total and now <= seconds:
        release = policy.next_release(now, Counts(started=len(starts)), total - len(starts))
        starts += [now] * release.count
        if release.wait is None:
            break
        now += max(release.wait, 1e-3)
    return starts


def test_without_settings_everything_starts_at_once() -> None:
    release = RolloutPolicy(RolloutSettings()).next_release(0.0, Counts(), 5000)
    assert (release.count, release.wait) == (5000, None)


def test_max_per_second_paces_starts() -> None:
    """At 10 per second, 100 deployments take about 10 seconds, the first starting at once."""
    starts = run(RolloutPolicy(RolloutSettings(max_per_second=10)), 100, 60)
    assert starts[0] == 0.0
    assert len(starts) == 100
    assert 9.5 <= starts[-1] <= 10.5


def test_a_rate_below_one_per_second() -> None:
    policy = RolloutPolicy(RolloutSettings(max_per_second=0.5))
    first = policy.next_release(0.0, Counts(), 10)
    assert (first.count, first.wait) == (1, 2.0)
    assert policy.next_release(1.0, Counts(started=1), 10).count == 0
    assert policy.next_release(2.0, Counts(started=1), 10).count == 1


def test_a_pause_allows_no_more_than_one_seconds_worth() -> None:
    """After a minute without asking, the rollout resumes at its rate, not in a burst."""
    policy = RolloutPolicy(RolloutSettings(max_per_second=10))
    policy.next_release(0.0, Counts(), 1)
    assert policy.next_release(60.0, Counts(started=1), 1000).count == 10


def test_a_fast_rollout_releases_a_tenth_of_a_second_at_a_time() -> None:
    """At 1,000 per second: the first at once, then batches of 100, never more than the rate."""
    policy = RolloutPolicy(RolloutSettings(max_per_second=1000))
    assert policy.next_release(0.0, Counts(), 5000).count == 1
    early = policy.next_release(0.01, Counts(started=1), 5000)
    assert early.count == 0
    assert early.wait == pytest.approx(0.09)
    assert policy.next_release(0.1, Counts(started=1), 5000).count == 100
    starts = run(RolloutPolicy(RolloutSettings(max_per_second=1000)), 5000, 60)
    assert len(starts) == 5000
    assert 4.8 <= starts[-1] <= 5.1
    assert max(collections.Counter(starts).values()) <= 101


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=50),
)
def test_starts_never_exceed_the_rate(rate: float, gaps: list[float]) -> None:
    """However often it is asked, by time T at most 1 + rate*T deployments have started."""
    policy = RolloutPolicy(RolloutSettings(max_per_second=rate))
    now, started = 0.0, 0
    for gap in gaps:
        now += gap
        started += policy.next_release(now, Counts(started=started), 10**6).count
        assert started <= 1 + rate * now + 1e-6


def test_ramp_up_multiplies_the_rate_every_step_up_to_the_cap() -> None:
    """From 2/s, times 2 every 4 started: 2, 4, 8, then capped at max-per-second 10."""
    settings = RolloutSettings(max_per_second=10, ramp_up=RampUp(2, 2, 4, "started"))
    rates = [current_rate(settings, Counts(started=n)) for n in (0, 3, 4, 7, 8, 12, 10**6)]
    assert rates == [2, 2, 4, 4, 8, 10, 10]


def test_ramp_up_on_successes_waits_for_them() -> None:
    """Counting succeeded deployments, starts alone don't raise the rate."""
    settings = RolloutSettings(ramp_up=RampUp(1, 3, 5, "succeeded"))
    assert current_rate(settings, Counts(started=100, succeeded=4)) == 1
    assert current_rate(settings, Counts(started=100, succeeded=10)) == 9


def test_a_long_ramp_without_a_cap_stays_finite() -> None:
    settings = RolloutSettings(ramp_up=RampUp(1, 5, 1, "started"))
    rate = current_rate(settings, Counts(started=10**6))
    assert rate is not None
    assert math.isfinite(rate)


def test_a_ramped_rollout_starts_slowly_then_speeds_up() -> None:
    """The first step runs at the base rate; the last hundred start many times faster."""
    settings = RolloutSettings(max_per_second=100, ramp_up=RampUp(5, 2, 20, "started"))
    starts = run(RolloutPolicy(settings), 300, 120)
    assert len(starts) == 300
    first_step = starts[19] - starts[0]
    last_hundred = starts[299] - starts[199]
    assert first_step >= 3.5  # 20 at 5/s
    assert last_hundred <= 1.5  # 100 at the 100/s cap


@pytest.mark.parametrize(
    ("counts", "aborts"),
    [
        (Counts(started=50, succeeded=0, failed=4), False),  # 4 finished: under the minimum
        (Counts(started=50, succeeded=8, failed=2), True),  # 20% of 10
        (Counts(started=50, succeeded=9, failed=1), False),  # 10% of 10
        (Counts(started=50, succeeded=16, failed=4), True),  # exactly 20%: aborts
        (Counts(started=50), False),
    ],
)
def test_the_abort_rule(counts: Counts, *, aborts: bool) -> None:
    """Abort once at least 5 finished and 20% or more of them failed."""
    policy = RolloutPolicy(RolloutSettings(abort=AbortRule(20, 5)))
    reason = policy.should_abort(counts)
    assert (reason is not None) is aborts


def test_the_abort_reason_says_what_happened() -> None:
    reason = RolloutPolicy(RolloutSettings(abort=AbortRule(25, 4))).should_abort(
        Counts(started=30, succeeded=3, failed=3)
    )
    assert reason == (
        "Stopped by the abort rule: 3 of 6 finished deployments failed (50.0%, at least 25% "
        "after 4 finished); 30 were started, the rest were not"
    )


def test_parsing_settings_from_strings() -> None:
    settings = parse_settings(
        {
            "max-per-second": "50",
            "ramp-up-from": "2.5",
            "ramp-up-factor": "1.5",
            "abort-failure-percent": "10",
            "abort-min-finished": "20",
        },
        spelled=SPELLED,
    )
    assert settings == RolloutSettings(50, RampUp(2.5, 1.5, 25, "started"), AbortRule(10, 20))
    assert parse_settings({}, spelled=SPELLED) == RolloutSettings()
    ramp = parse_settings(
        {"ramp-up-from": 1, "ramp-up-factor": 2, "ramp-up-every": "7", "ramp-up-on": "succeeded"},
        spelled=SPELLED,
    ).ramp_up
    assert ramp == RampUp(1, 2, 7, "succeeded")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max-per-second": "fast"}, "--max-per-second: must be a number, not 'fast'"),
        ({"max-per-second": "0"}, "--max-per-second: must be a number more than 0"),
        ({"max-per-second": "nan"}, "--max-per-second: must be a number more than 0"),
        ({"max-per-second": "inf"}, "--max-per-second: must be a number more than 0"),
        ({"ramp-up-from": "1"}, "--ramp-up-factor: is required with --ramp-up-from"),
        ({"ramp-up-factor": "2"}, "--ramp-up-from: is required with --ramp-up-factor"),
        (
            {"ramp-up-from": "1", "ramp-up-factor": "1"},
            "--ramp-up-factor: must be more than 1 and at most 5",
        ),
        (
            {"ramp-up-from": "1", "ramp-up-factor": "6"},
            "--ramp-up-factor: must be more than 1 and at most 5",
        ),
        (
            {"max-per-second": "5", "ramp-up-from": "10", "ramp-up-factor": "2"},
            "--ramp-up-from: must not be more than max-per-second (5)",
        ),
        (
            {"ramp-up-from": "1", "ramp-up-factor": "2", "ramp-up-on": "failed"},
            "--ramp-up-on: must be started or succeeded, not 'failed'",
        ),
        ({"ramp-up-every": "5"}, "--ramp-up-every: goes with ramp-up-from and ramp-up-factor"),
        (
            {"ramp-up-from": "1", "ramp-up-factor": "2", "ramp-up-every": "1.5"},
            "--ramp-up-every: must be a whole number of at least 1, not '1.5'",
        ),
        (
            {"abort-failure-percent": "10"},
            "--abort-min-finished: is required with --abort-failure-percent",
        ),
        (
            {"abort-failure-percent": "150", "abort-min-finished": "3"},
            "--abort-failure-percent: must be at most 100, not 150",
        ),
        (
            {"abort-failure-percent": "10", "abort-min-finished": "0"},
            "--abort-min-finished: must be a whole number of at least 1, not '0'",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(values: dict[str, str], message: str) -> None:
    with pytest.raises(RolloutSettingsError) as caught:
        parse_settings(values, spelled=SPELLED)
    assert str(caught.value).startswith(message)
