"""Control-plane ids, timestamps and ARNs in AWS Greengrass V1's formats."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from edge.cloud.ids import (
    Arns,
    is_account_id,
    is_function_arn,
    new_id,
    parse_version_arn,
    precise_timestamp,
    thing_name_of,
    timestamp,
)

ARNS = Arns("us-west-2", "123456789012")
DEF_ID = "11111111-2222-4333-8444-555555555555"
VER_ID = "66666666-7777-4888-9999-aaaaaaaaaaaa"


def test_ids_are_uuids_and_unique() -> None:
    """New ids are random UUIDs, as AWS gives Greengrass objects."""
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(str(uuid.UUID(i)) == i for i in ids)


def test_arns_have_aws_greengrass_v1_formats() -> None:
    """Definition, version, group and deployment ARNs read as AWS writes them."""
    base = "arn:aws:greengrass:us-west-2:123456789012:/greengrass"
    assert ARNS.definition("resources", DEF_ID) == f"{base}/definition/resources/{DEF_ID}"
    assert (
        ARNS.definition_version("functions", DEF_ID, VER_ID)
        == f"{base}/definition/functions/{DEF_ID}/versions/{VER_ID}"
    )
    assert ARNS.group(DEF_ID) == f"{base}/groups/{DEF_ID}"
    assert ARNS.group_version(DEF_ID, VER_ID) == f"{base}/groups/{DEF_ID}/versions/{VER_ID}"
    assert ARNS.deployment(DEF_ID, VER_ID) == f"{base}/groups/{DEF_ID}/deployments/{VER_ID}"


def test_version_arns_parse_back_and_others_do_not() -> None:
    """A version ARN parses to its kind and ids; anything else (groups, typos) is None."""
    for kind in ("cores", "resources", "functions", "connectors", "subscriptions"):
        parsed = parse_version_arn(ARNS.definition_version(kind, DEF_ID, VER_ID))
        assert parsed is not None
        assert (parsed.kind, parsed.definition_id, parsed.version_id) == (kind, DEF_ID, VER_ID)
    good = ARNS.definition_version("resources", DEF_ID, VER_ID)
    for bad in (
        ARNS.definition("resources", DEF_ID),
        ARNS.group_version(DEF_ID, VER_ID),
        ARNS.definition_version("things", DEF_ID, VER_ID),
        good + "x",
        " " + good,
        good.replace("123456789012", "12345"),
    ):
        assert parse_version_arn(bad) is None, bad


def test_thing_names_come_from_iot_thing_arns() -> None:
    """The core's thing is the last part of its ThingArn; other strings name no thing."""
    assert (
        thing_name_of("arn:aws:iot:us-west-2:123456789012:thing/edge-core_1:a") == "edge-core_1:a"
    )
    assert thing_name_of("arn:aws-cn:iot:cn-north-1:123456789012:thing/x") == "x"
    for bad in (
        "arn:aws:iot:us-west-2:123456789012:thing/",
        "arn:aws:iot:us-west-2:123456789012:thing/a/b",
        "arn:aws:iot:us-west-2:123456789012:thing/a+b",
        "arn:aws:iot:us-west-2:123456789012:cert/abc",
        "arn:aws:greengrass:us-west-2:123456789012:thing/x",
        "thing/x",
    ):
        assert thing_name_of(bad) is None, bad


def test_function_arns_and_account_ids() -> None:
    """Qualified and unqualified Lambda ARNs are function ARNs; account ids are 12 digits."""
    assert is_function_arn("arn:aws:lambda:us-west-2:123456789012:function:myFunction:1")
    assert is_function_arn("arn:aws:lambda:us-west-2:123456789012:function:my-fn")
    assert is_function_arn("arn:aws:lambda:::function:GGSecretManager:1")
    assert not is_function_arn("arn:aws:lambda:us-west-2:123456789012:layer:x:1")
    assert not is_function_arn("myFunction")
    assert is_account_id("123456789012")
    assert not is_account_id("12345678901")
    assert not is_account_id("12345678901a")


def test_timestamps_are_utc_iso_with_z() -> None:
    """Timestamps are ISO-8601 UTC ending in Z: milliseconds, or microseconds for CreatedAt."""
    moment = datetime(2026, 11, 28, 12, 0, 1, 234567, tzinfo=UTC)
    assert timestamp(moment) == "2026-11-28T12:00:01.234Z"
    assert precise_timestamp(moment) == "2026-11-28T12:00:01.234567Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timestamp())
