# SPDX-License-Identifier: Apache-2.0
"""Incremental fetch planning and refresh diffs: which versions to fetch, what changed."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents
from edge.secrets.refresh import (
    LabelChange,
    RateLimit,
    label_changes,
    moved_labels,
    resource_of,
)
from edge.secrets.source import Described, held_versions, plan_fetch

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"
OTHER = "arn:aws:secretsmanager:us-east-1:123456789012:secret:api-XyZ123"


def version(vid: str, *stages: str) -> SecretVersion:
    """A held version with a value."""
    return SecretVersion(
        version_id=vid, version_stages=stages, created_date=1.0, secret_string=f"v-{vid}"
    )


HELD = {ARN: {"v1": version("v1", "AWSCURRENT"), "v0": version("v0", "Label1")}}


def test_unchanged_secret_is_served_entirely_from_held_versions() -> None:
    """Every label on a held version: nothing to fetch."""
    described = {ARN: Described("db", {"v1": ("AWSCURRENT",), "v0": ("Label1",)})}
    plan = plan_fetch({ARN: ("AWSCURRENT", "Label1")}, HELD, described)
    assert plan.missing == {}
    assert plan.reused[ARN]["AWSCURRENT"] is HELD[ARN]["v1"]
    assert plan.reused[ARN]["Label1"] is HELD[ARN]["v0"]


def test_rotated_current_is_fetched_and_a_label_moved_to_a_held_version_is_free() -> None:
    """AWSCURRENT on a new version is missing; Label1 moved onto v1 (held) costs nothing."""
    described = {
        ARN: Described("db", {"v2": ("AWSCURRENT",), "v1": ("AWSPREVIOUS", "Label1")}),
    }
    plan = plan_fetch({ARN: ("AWSCURRENT", "Label1")}, HELD, described)
    assert plan.missing == {ARN: ("AWSCURRENT",)}
    reused = plan.reused[ARN]["Label1"]
    assert reused.version_id == "v1"
    # The stages come from DescribeSecret's answer, the value from the held version.
    assert reused.version_stages == ("AWSPREVIOUS", "Label1")
    assert reused.secret_string == "v-v1"


def test_undescribed_or_unheld_secrets_and_missing_labels_are_fetched() -> None:
    """No answer, nothing held, or a label no version carries: the fetch decides (and errs)."""
    described = {ARN: Described("db", {"v1": ("AWSCURRENT",)})}
    plan = plan_fetch(
        {ARN: ("AWSCURRENT", "Ghost"), OTHER: ("AWSCURRENT",)},
        HELD,
        described,
    )
    assert plan.missing == {ARN: ("Ghost",), OTHER: ("AWSCURRENT",)}
    assert set(plan.reused) == {ARN}
    assert plan_fetch({ARN: ("AWSCURRENT",)}, HELD, {}).missing == {ARN: ("AWSCURRENT",)}


def test_held_versions_collects_every_version_by_arn() -> None:
    """The store's versions, by ARN then VersionId, merged across resources of one secret."""
    a = LocalSecret("a", ARN, "db", {"AWSCURRENT": "v1"}, {"v1": HELD[ARN]["v1"]})
    b = LocalSecret("b", ARN, "db", {"Label1": "v0"}, {"v0": HELD[ARN]["v0"]})
    held = held_versions(StoreContents(secrets={"a": a, "b": b}))
    assert held == {ARN: {"v1": HELD[ARN]["v1"], "v0": HELD[ARN]["v0"]}}
    assert held_versions(None) == {}


def test_moved_labels_and_label_changes() -> None:
    """A refresh sees which deployed labels moved, and reports old and new VersionIds."""
    old = LocalSecret(
        "db", ARN, "db", {"AWSCURRENT": "v1", "Label1": "v0"}, dict(HELD[ARN].items())
    )
    assert moved_labels(old, Described("db", {"v1": ("AWSCURRENT",), "v0": ("Label1",)})) == []
    moved = Described("db", {"v2": ("AWSCURRENT",), "v1": ("AWSPREVIOUS",), "v0": ()})
    assert moved_labels(old, moved) == ["AWSCURRENT", "Label1"]
    new = LocalSecret(
        "db", ARN, "db", {"AWSCURRENT": "v2", "Label1": "v0"}, {"v2": version("v2", "AWSCURRENT")}
    )
    assert label_changes(old, new) == [LabelChange("db", ARN, "AWSCURRENT", "v1", "v2")]
    assert resource_of(old).labels == ("AWSCURRENT", "Label1")


async def test_rate_limit_spaces_calls() -> None:
    """Five calls at 20 a second take at least 0.2 s: no burst."""
    limit = RateLimit(20)
    started = time.monotonic()
    await asyncio.gather(*(limit.wait() for _ in range(5)))
    assert time.monotonic() - started >= 0.19
    with pytest.raises(ValueError, match="positive"):
        RateLimit(0)
