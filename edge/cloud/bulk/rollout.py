# SPDX-License-Identifier: Apache-2.0
"""Rollout policy of a bulk deployment: a rate limit, an exponential ramp-up, an abort rule.

Pure: the policy is given the time and the counts, and answers how many deployments may start
now (and how long until the next may), and whether the rollout must stop. No clock is read and
nothing sleeps here, so every rule is tested with made-up times.

**Rate.** `max_per_second` caps starts with a token bucket that refills at the current rate and
holds at most one second's worth (never less than one start), so a rollout that paused (a
broker outage, a slow batch) resumes at its rate rather than in a burst. The bucket starts
with one start in it, so the first group starts at once. After that, starts are released in
steps of a tenth of a second's worth (`STEP_SECONDS`; one at rates under 20 a second), so a
fast rollout hands its deployer batches, not single records.

**Ramp-up**, after AWS IoT Jobs' `exponentialRate` (`baseRatePerMinute`, `incrementFactor`,
`rateIncreaseCriteria`) counted per second rather than per minute: the rollout starts at
`from_per_second`, and each time another `every` deployments have been started
(`numberOfNotifiedThings`) or have succeeded (`numberOfSucceededThings`), the rate is
multiplied by `factor`, up to `max_per_second` when one is set. The rate is a function of the
counts alone, so a replica taking over a rollout continues at the step it had reached. As in
IoT Jobs, the factor is more than 1 and at most 5.

**Abort**, after IoT Jobs' abort criteria (`thresholdPercentage`, `minNumberOfExecutedThings`):
once at least `min_finished` deployments have finished (Success or Failure, as their cores
reported), if `failed / finished * 100 >= failure_percent`, the rest are not started.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from edge.cloud.errors import RolloutSettingsError

#: What the ramp-up counts toward its next step, as IoT Jobs' two rate-increase criteria.
RampCriterion = Literal["started", "succeeded"]
RAMP_CRITERIA: Final = ("started", "succeeded")
#: IoT Jobs' bounds on incrementFactor.
MAX_RAMP_FACTOR: Final = 5.0
#: Steps of the ramp when `every` is not given: ten seconds' worth at the base rate, so the
#: first step is long enough for early failures to be reported before the rate doubles.
DEFAULT_RAMP_SECONDS: Final = 10
#: The largest rate computed: beyond any rollout, and far from a float's overflow.
_MAX_RATE: Final = 1e12
#: Starts are released in steps of this many seconds' worth at the current rate (at least one).
STEP_SECONDS: Final = 0.1
#: Float slack in the token bucket, and the shortest wait it answers (a millisecond: no
#: caller's clock or sleep is finer, and a shorter one could spin without time passing).
_EPSILON: Final = 1e-9
_MIN_WAIT: Final = 1e-3
#: The settings' names, as `edge cloud start-bulk-deployment` options and `edge:` tags.
NAMES: Final = (
    "max-per-second",
    "ramp-up-from",
    "ramp-up-factor",
    "ramp-up-every",
    "ramp-up-on",
    "abort-failure-percent",
    "abort-min-finished",
)


@dataclass(frozen=True, slots=True)
class RampUp:
    """Exponential ramp-up: start at `from_per_second`, times `factor` every `every` counted."""

    from_per_second: float
    factor: float
    every: int
    on: RampCriterion = "started"


@dataclass(frozen=True, slots=True)
class AbortRule:
    """Stop the rest once `min_finished` have finished and `failure_percent` of them failed."""

    failure_percent: float
    min_finished: int


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    """How a bulk deployment is rolled out. The defaults start every group as fast as it can."""

    max_per_second: float | None = None
    ramp_up: RampUp | None = None
    abort: AbortRule | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    """Where a rollout stands: deployments started, and the outcomes their cores reported."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        """Deployments whose core reported Success or Failure."""
        return self.succeeded + self.failed

    @property
    def in_flight(self) -> int:
        """Deployments started and not finished."""
        return self.started - self.finished


@dataclass(frozen=True, slots=True)
class Release:
    """How many deployments may start now, and when to ask again."""

    count: int
    #: Seconds until one more may start; None when the rate sets no limit.
    wait: float | None


def current_rate(settings: RolloutSettings, counts: Counts) -> float | None:
    """Starts per second allowed at these counts; None when unlimited."""
    cap = settings.max_per_second
    ramp = settings.ramp_up
    if ramp is None:
        return cap
    counted = counts.started if ramp.on == "started" else counts.succeeded
    steps = counted // ramp.every
    limit = cap if cap is not None else _MAX_RATE
    # Compared in logarithms first: factor ** steps overflows a float long before a large
    # rollout ends.
    if math.log(ramp.from_per_second) + steps * math.log(ramp.factor) >= math.log(limit):
        return limit
    return float(ramp.from_per_second * ramp.factor**steps)


def abort_reason(settings: RolloutSettings, counts: Counts) -> str | None:
    """Why the rollout must stop at these counts, for ErrorMessage; None to go on."""
    rule = settings.abort
    if rule is None or counts.finished < rule.min_finished or counts.finished == 0:
        return None
    percent = counts.failed * 100 / counts.finished
    if percent < rule.failure_percent:
        return None
    return (
        f"Stopped by the abort rule: {counts.failed} of {counts.finished} finished deployments "
        f"failed ({percent:.1f}%, at least {rule.failure_percent:g}% after "
        f"{rule.min_finished} finished); {counts.started} were started, the rest were not"
    )


@dataclass(slots=True)
class RolloutPolicy:
    """The policy of one running rollout: its settings and its token bucket.

    Owned by the task running the bulk deployment; only the bucket changes.
    """

    settings: RolloutSettings
    _tokens: float = 1.0
    _last: float | None = field(default=None)

    def next_release(self, now: float, counts: Counts, wanted: int) -> Release:
        """How many of `wanted` deployments may start at `now` (monotonic seconds); takes them.

        The starts granted are spent from the bucket: call once per batch, with the number
        that would start.
        """
        rate = current_rate(self.settings, counts)
        if rate is None:
            return Release(wanted, None)
        capacity = max(1.0, rate)
        first = self._last is None
        if self._last is not None:
            self._tokens = min(capacity, self._tokens + (now - self._last) * rate)
        self._last = now
        # Starts go out in steps of a tenth of a second's worth (at least one): a batch of
        # deployments costs a few transactions whatever its size, so a fast rollout must not
        # be cut into batches of one. The first start goes at once all the same.
        step = 1 if first else max(1, min(wanted, int(rate * STEP_SECONDS)))
        # Refilled in float steps, the bucket can stop a hair short of a whole start.
        whole = int(self._tokens + _EPSILON)
        granted = min(wanted, whole) if whole >= step else 0
        self._tokens = max(0.0, self._tokens - granted)
        return Release(granted, max(_MIN_WAIT, (step - self._tokens) / rate))

    def should_abort(self, counts: Counts) -> str | None:
        """Why the rollout must stop now (for ErrorMessage), or None."""
        return abort_reason(self.settings, counts)


def parse_settings(values: Mapping[str, object], *, spelled: Mapping[str, str]) -> RolloutSettings:
    """Rollout settings from named values (strings from tags or the command line, or numbers).

    Args:
        values: By the names in `NAMES`; absent or None means not set.
        spelled: How the caller named each setting, for messages (`--max-per-second`,
            `tags: edge:max-per-second`).

    Raises:
        RolloutSettingsError: A value is not a number in range, or settings that go together
            are not given together.
    """
    reader = _Reader(values, spelled)
    cap = reader.number("max-per-second")
    base, factor = reader.number("ramp-up-from"), reader.number("ramp-up-factor")
    every, on = reader.count("ramp-up-every"), reader.text("ramp-up-on")
    percent, least = reader.number("abort-failure-percent"), reader.count("abort-min-finished")
    reader.together("ramp-up-from", "ramp-up-factor")
    reader.together("abort-failure-percent", "abort-min-finished")
    ramp = None
    if base is not None and factor is not None:
        if not 1.0 < factor <= MAX_RAMP_FACTOR:
            raise reader.error("ramp-up-factor", f"must be more than 1 and at most 5, not {factor}")
        if cap is not None and base > cap:
            raise reader.error("ramp-up-from", f"must not be more than max-per-second ({cap:g})")
        if on is not None and on not in RAMP_CRITERIA:
            raise reader.error("ramp-up-on", f"must be started or succeeded, not {on!r}")
        steps = every if every is not None else max(1, math.ceil(base * DEFAULT_RAMP_SECONDS))
        ramp = RampUp(base, factor, steps, "succeeded" if on == "succeeded" else "started")
    else:
        for name in ("ramp-up-every", "ramp-up-on"):
            if values.get(name) is not None:
                raise reader.error(name, "goes with ramp-up-from and ramp-up-factor")
    abort = None
    if percent is not None and least is not None:
        if percent > 100:  # noqa: PLR2004 - a percentage
            raise reader.error("abort-failure-percent", f"must be at most 100, not {percent:g}")
        abort = AbortRule(percent, least)
    return RolloutSettings(max_per_second=cap, ramp_up=ramp, abort=abort)


@dataclass(frozen=True, slots=True)
class _Reader:
    values: Mapping[str, object]
    spelled: Mapping[str, str]

    def error(self, name: str, problem: str) -> RolloutSettingsError:
        return RolloutSettingsError(self.spelled.get(name, name), problem)

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        return None if value is None else str(value).strip()

    def number(self, name: str) -> float | None:
        """A positive, finite number."""
        text = self.text(name)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            raise self.error(name, f"must be a number, not {text[:40]!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise self.error(name, f"must be a number more than 0, not {text[:40]!r}")
        return value

    def count(self, name: str) -> int | None:
        """A whole number of at least 1."""
        text = self.text(name)
        if text is None:
            return None
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise self.error(name, f"must be a whole number of at least 1, not {text[:40]!r}")
        return int(text)

    def together(self, first: str, second: str) -> None:
        given = {n for n in (first, second) if self.values.get(n) is not None}
        if len(given) == 1:
            missing = second if first in given else first
            present = first if first in given else second
            raise self.error(missing, f"is required with {self.spelled.get(present, present)}")
