"""Function code reads its secrets through `edge.child.function`: versions, labels, Refresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.fixtures.core import secret_resource
from tests.support.env import Env
from tests.support.functions import code_of, function, invoke
from tests.support.leaks import LEAKS

pytestmark = pytest.mark.network


def _put_value(env: Env, arn: str, label: str) -> tuple[str, str]:
    """Put a new AWSCURRENT version (the old one becomes AWSPREVIOUS); its (VersionId, value)."""
    value = f"{label}-{len(env.values)}-value"
    env.values.append(value)
    LEAKS.add_secret(value, f"{arn} ({label})")
    return env.sm.put_secret_value(SecretId=arn, SecretString=value)["VersionId"], value


def test_a_function_reads_versions_refreshes_and_lists_its_grants(env: Env, tmp_path: Path) -> None:
    """VersionId, AWSPREVIOUS and Refresh reach the core; listing shows grants, never values."""
    arn, first_id, first_value = env.create_secret("fn/db")
    second_id, second_value = _put_value(env, arn, "second")
    other, _, _ = env.create_secret("fn/other")
    reader = function(
        "typed", "typed.calls", code_of(tmp_path / "typed.zip", ("typed.py",)), policies=["db"]
    )
    dep = env.operator.deploy(
        [secret_resource("db", arn, ["AWSPREVIOUS"]), secret_resource("other", other)],
        functions=[reader],
    )
    env.operator.wait_status(dep, "Success")

    def run(*calls: Any) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = invoke(env, "typed", {"calls": list(calls)})
        return results

    listing, current, previous, pinned, denied, unknown = run(
        "list",
        {"SecretId": "fn/db"},
        {"SecretId": arn, "VersionStage": "AWSPREVIOUS"},
        {"SecretId": "fn/db", "VersionId": first_id},
        {"SecretId": "fn/other"},
        {"SecretId": "fn/db", "VersionId": "no-such-version"},
    )
    assert listing == {
        "ok": True,
        "secrets": [
            {
                "ARN": arn,
                "Name": "fn/db",
                "Versions": [
                    {"VersionId": second_id, "VersionStages": ["AWSCURRENT"]},
                    {"VersionId": first_id, "VersionStages": ["AWSPREVIOUS"]},
                ],
            }
        ],
    }
    assert (current["value"]["VersionId"], current["value"]["SecretString"]) == (
        second_id,
        second_value,
    )
    assert (previous["value"]["VersionId"], previous["value"]["SecretString"]) == (
        first_id,
        first_value,
    )
    assert pinned == previous
    assert denied["ok"] is False
    assert denied["status"] == 403
    assert "may not read" in denied["message"]
    assert other not in str(listing)
    assert (unknown["status"], "no-such-version" in unknown["message"]) == (404, True)

    third_id, third_value = _put_value(env, arn, "third")
    stored, refreshed = run({"SecretId": "fn/db"}, {"SecretId": "fn/db", "Refresh": True})
    assert stored["value"]["SecretString"] == second_value
    assert (refreshed["value"]["VersionId"], refreshed["value"]["SecretString"]) == (
        third_id,
        third_value,
    )
