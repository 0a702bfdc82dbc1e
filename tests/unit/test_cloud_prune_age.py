"""`edge cloud prune`'s ages and the bulk deployment states it removes."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from edge.cloud import prune
from edge.cloud.bulk.state import FINAL
from edge.cloud.errors import CloudUsageError


@pytest.mark.parametrize(
    ("age", "expected"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30))],
)
def test_an_age_is_days_hours_or_minutes(age: str, expected: timedelta) -> None:
    assert prune.parse_age(age) == expected


@pytest.mark.parametrize("age", ["", "90", "0d", "1.5d", "90s", "1w", "9999999d"])
def test_anything_else_is_refused_naming_the_option(age: str) -> None:
    with pytest.raises(CloudUsageError, match="--older-than: must be a duration such as 90d"):
        prune.parse_age(age)


def test_only_ended_bulk_deployments_are_removed() -> None:
    """The SQL spells BulkState's final states; a new final state must be added there too."""
    assert set(re.findall(r"'(\w+)'", prune._OLD_BULKS)) == {str(s) for s in FINAL}
