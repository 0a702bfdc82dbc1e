"""What the core does with a group's loggers and devices (edge.model.loggers)."""

from __future__ import annotations

import pytest

from edge.errors import DeploymentInvalidError
from edge.model.loggers import plan_logging


def logger(ident: str, component: str, level: str, kind: str) -> dict[str, object]:
    return {"Id": ident, "Component": component, "Level": level, "Type": kind}


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("DEBUG", "debug"),
        ("INFO", "info"),
        ("WARN", "warning"),
        ("ERROR", "error"),
        ("FATAL", "error"),
    ],
)
def test_a_filesystem_system_logger_sets_the_core_level_and_nothing_is_ignored(
    level: str, expected: str
) -> None:
    """Each V1 level of a FileSystem GreengrassSystem logger maps to one of the core's levels."""
    plan = plan_logging({"Loggers": [logger("sys", "GreengrassSystem", level, "FileSystem")]})
    assert (plan.level, plan.note) == (expected, None)


def test_cloudwatch_lambda_loggers_and_devices_are_named_in_one_note() -> None:
    """What edge doesn't act on is listed, in order, in a single line."""
    plan = plan_logging(
        {
            "Loggers": [
                logger("cw", "GreengrassSystem", "INFO", "AWSCloudWatch"),
                logger("fn", "Lambda", "DEBUG", "FileSystem"),
            ],
            "Devices": [
                {"Id": "d1", "ThingArn": "arn:aws:iot:r:1:thing/d", "CertificateArn": "arn:c"}
            ],
        }
    )
    assert plan.level is None
    assert plan.note == (
        'edge ignored AWSCloudWatch logger "cw" (GreengrassSystem): edge doesn\'t send logs to '
        'CloudWatch; FileSystem logger "fn" (Lambda): function output is in the core\'s log, at '
        'its level; 1 device(s) ("d1"): edge has no local device connections'
    )
    assert plan_logging({}).note is None


@pytest.mark.parametrize(
    ("group", "problem"),
    [
        ({"Loggers": {}}, "Loggers must be an array"),
        ({"Loggers": [logger("a", "Kernel", "INFO", "FileSystem")]}, '"Kernel" is not one of'),
        ({"Loggers": [logger("a", "Lambda", "INFO", "Syslog")]}, '"Syslog" is not one of'),
        ({"Loggers": [logger("a", "Lambda", "INFO", "FileSystem")] * 2}, "appears twice"),
        ({"Loggers": [{**logger("a", "Lambda", "INFO", "FileSystem"), "Space": "1"}]}, "integer"),
        ({"Devices": [{"Id": "d", "ThingArn": "thing", "CertificateArn": "arn:c"}]}, "an ARN"),
    ],
)
def test_malformed_loggers_and_devices_are_refused_naming_the_entry(
    group: dict[str, object], problem: str
) -> None:
    """A bad entry is a DeploymentInvalidError that says what is wrong."""
    with pytest.raises(DeploymentInvalidError, match=problem):
        plan_logging(group)
