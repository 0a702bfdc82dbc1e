"""The V1 importer over recorded Greengrass V1 answers: connectors, loggers, paging, completion.

Answers in the API's own shape, with a real control-plane database: a connector edge doesn't
ship beside one it does, a logger, a version completed by a later import, and paging through
NextToken, which moto's server doesn't do.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from edge.cloud import groups
from edge.cloud.db import Database
from edge.cloud.v1import.plan import Stored, plan_group
from edge.cloud.v1import.reader import V1_KINDS, V1Account, V1Definition, V1Group, V1Reader
from edge.cloud.v1import.report import report_lines
from edge.cloud.v1import.writer import import_account

BASE = "arn:aws:greengrass:us-west-2:123456789012:/greengrass"
TOKEN_ARN = "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-TwilioAuthToken-ntSlp6"
TWILIO = "arn:aws:greengrass:us-west-2::/connectors/TwilioNotifications/versions/4"
MODBUS = "arn:aws:greengrass:us-west-2::/connectors/ModbusRTUProtocolAdapter/versions/3"
WHEN = "2019-06-18T16:21:21.457Z"
GROUP = "11111111-1111-4111-8111-111111111111"
GROUP_VERSION = "22222222-2222-4222-8222-222222222222"


def uid(n: int) -> str:
    return f"{n:08d}-0000-4000-8000-000000000000"


def definition(key: str, n: int, items: list[dict[str, Any]]) -> V1Definition:
    """A definition as GetXDefinition answers, with one version as GetXDefinitionVersion."""
    kind = V1_KINDS[key]
    arn = f"{BASE}/definition/{kind.segment}/{uid(n)}"
    version = {
        "Arn": f"{arn}/versions/{uid(n + 1)}",
        "CreationTimestamp": WHEN,
        "Id": uid(n),
        "Version": uid(n + 1),
        "Definition": {kind.list_key: items},
    }
    info = {
        "Arn": arn,
        "CreationTimestamp": WHEN,
        "Id": uid(n),
        "LastUpdatedTimestamp": WHEN,
        "LatestVersion": uid(n + 1),
        "LatestVersionArn": version["Arn"],
        "Name": kind.segment,
    }
    return V1Definition(kind=kind, info=info, versions=[version])


def recorded_account() -> V1Account:
    """A group with a Twilio connector, a Modbus connector edge doesn't ship, and a logger."""
    core = definition(
        "CoreDefinitionVersionArn",
        10,
        [
            {
                "Id": "core",
                "ThingArn": "arn:aws:iot:us-west-2:123456789012:thing/kitchen-core",
                "CertificateArn": "arn:aws:iot:us-west-2:123456789012:cert/abc",
                "SyncShadow": False,
            }
        ],
    )
    resources = definition(
        "ResourceDefinitionVersionArn",
        20,
        [
            {
                "Id": "MyTwilioSecret",
                "Name": "MyTwilioSecret",
                "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": TOKEN_ARN}},
            },
            {
                "Id": "Serial",
                "Name": "Serial",
                "ResourceDataContainer": {"LocalDeviceResourceData": {"SourcePath": "/dev/ttyS0"}},
            },
        ],
    )
    connectors = definition(
        "ConnectorDefinitionVersionArn",
        30,
        [
            {
                "Id": "twilio",
                "ConnectorArn": TWILIO,
                "Parameters": {
                    "TWILIO_ACCOUNT_SID": "AC123",
                    "TwilioAuthTokenSecretArn": TOKEN_ARN,
                    "TwilioAuthTokenSecretArn-ResourceId": "MyTwilioSecret",
                    "DefaultFromPhoneNumber": "+15555550100",
                },
            },
            {
                "Id": "modbus",
                "ConnectorArn": MODBUS,
                "Parameters": {"ModbusSerialPort-ResourceId": "Serial"},
            },
        ],
    )
    loggers = definition(
        "LoggerDefinitionVersionArn",
        40,
        [{"Id": "system", "Component": "GreengrassSystem", "Level": "INFO", "Type": "FileSystem"}],
    )
    refs = {d.kind.group_key: d.versions[0]["Arn"] for d in (core, resources, connectors, loggers)}
    group = V1Group(
        info={
            "Arn": f"{BASE}/groups/{GROUP}",
            "CreationTimestamp": WHEN,
            "Id": GROUP,
            "LastUpdatedTimestamp": WHEN,
            "LatestVersion": GROUP_VERSION,
            "Name": "Kitchen",
        },
        versions=[
            {
                "Arn": f"{BASE}/groups/{GROUP}/versions/{GROUP_VERSION}",
                "CreationTimestamp": WHEN,
                "Id": GROUP,
                "Version": GROUP_VERSION,
                "Definition": refs,
            }
        ],
    )
    return V1Account(
        groups=[group],
        definitions={
            (d.kind.segment, d.info["Id"]): d for d in (core, resources, connectors, loggers)
        },
        calls=7,
    )


def test_connectors_are_copied_loggers_and_unshipped_connectors_are_reported(
    tmp_path: Path,
) -> None:
    """The Twilio connector and the logger are stored and resolvable; Modbus is named."""
    account = recorded_account()
    with Database.open(tmp_path / "cloud.db") as db:
        report = import_account(db, account, dry_run=False, progress=lambda *_: None)
        shown = groups.get_group_version(db, GROUP, GROUP_VERSION)
        with db.read() as conn:
            resolved = groups.resolve_group(conn, shown["Definition"])
    assert shown["Arn"] == account.groups[0].versions[0]["Arn"]
    assert shown["CreationTimestamp"] == WHEN
    assert shown["Definition"]["LoggerDefinitionVersionArn"].endswith(f"/versions/{uid(41)}")
    assert resolved.group["Loggers"][0]["Id"] == "system"
    assert shown["Definition"]["ConnectorDefinitionVersionArn"].endswith(f"/versions/{uid(31)}")
    assert [c["ConnectorArn"] for c in resolved.group["Connectors"]] == [TWILIO, MODBUS]
    assert report.counts["connector definition versions", "copied"] == 1
    text = "\n".join(report_lines(report))
    assert report.counts["logger definition versions", "copied"] == 1
    assert "left out" not in text
    assert f"connector 'modbus' ({MODBUS}): edge doesn't ship it" in text
    assert "connector 'twilio'" not in text
    assert "resource 'Serial' (LocalDeviceResourceData)" in text
    # Deploying the version fails on Modbus; the report says so before anyone tries.
    assert "can't be deployed as it is" in text
    assert "ModbusRTUProtocolAdapter" in text


def test_a_later_import_completes_a_version_stored_without_a_part(tmp_path: Path) -> None:
    """A version stored without some of V1's references gets them on the next import."""
    account = recorded_account()
    with Database.open(tmp_path / "cloud.db") as db:
        import_account(db, account, dry_run=False, progress=lambda *_: None)
    # As an edge that did not store connectors would have left it.
    with sqlite3.connect(tmp_path / "cloud.db") as conn:
        (body,) = conn.execute("SELECT body FROM group_versions").fetchone()
        partial = {k: v for k, v in json.loads(body).items() if not k.startswith("Connector")}
        conn.execute("UPDATE group_versions SET body = :body", {"body": json.dumps(partial)})
    with Database.open(tmp_path / "cloud.db") as db:
        report = import_account(db, account, dry_run=False, progress=lambda *_: None)
        shown = groups.get_group_version(db, GROUP, GROUP_VERSION)
    assert report.counts["group versions", "copied"] == 1
    assert not report.conflicts
    assert "ConnectorDefinitionVersionArn" in shown["Definition"]


def test_an_id_stored_with_other_content_is_a_conflict_and_nothing_is_written() -> None:
    """A group id stored under another ARN: the plan reports it and writes nothing."""
    account = recorded_account()
    stored = Stored(groups={GROUP: f"{BASE}/groups/elsewhere"})
    plan = plan_group(account, account.groups[0], stored, set())
    assert plan.conflicts == [
        f"group {GROUP} is stored with ARN {BASE}/groups/elsewhere, not {BASE}/groups/{GROUP}"
    ]


class RecordedClient:
    """Answers recorded V1 pages by (method, NextToken); records every request."""

    def __init__(self, pages: dict[tuple[str, str | None], dict[str, Any]]) -> None:
        self.pages = pages
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Any:
        """The client method `method`: answers its recorded page."""

        async def call(**params: Any) -> dict[str, Any]:
            self.requests.append((method, params))
            return json.loads(json.dumps(self.pages[method, params.get("NextToken")]))

        return call


def test_every_list_and_paged_definition_version_is_followed_to_its_last_page() -> None:
    """Two pages of groups and a function list in two pages: all of it is read."""
    fn_def = f"{BASE}/definition/functions/{uid(50)}"
    fn_version = f"{fn_def}/versions/{uid(51)}"

    def group(n: int) -> dict[str, Any]:
        return {"Id": uid(n), "Arn": f"{BASE}/groups/{uid(n)}", "CreationTimestamp": WHEN}

    def fn(name: str) -> dict[str, Any]:
        return {"Id": name, "FunctionArn": f"arn:aws:lambda:us-west-2:1:function:{name}:1"}

    version = {"Arn": fn_version, "CreationTimestamp": WHEN, "Id": uid(50), "Version": uid(51)}
    pages: dict[tuple[str, str | None], dict[str, Any]] = {
        ("list_groups", None): {"Groups": [group(1)], "NextToken": "g2"},
        ("list_groups", "g2"): {"Groups": [group(2)]},
        ("list_group_versions", None): {"Versions": [{"Version": uid(60)}], "NextToken": "v2"},
        ("list_group_versions", "v2"): {"Versions": []},
        ("get_group_version", None): {
            "Arn": "x",
            "Version": uid(60),
            "Definition": {"FunctionDefinitionVersionArn": fn_version},
        },
        ("get_function_definition", None): {"Id": uid(50), "Arn": fn_def},
        ("list_function_definition_versions", None): {"Versions": [version]},
        ("get_function_definition_version", None): version
        | {"Definition": {"Functions": [fn("a")]}, "NextToken": "f2"},
        ("get_function_definition_version", "f2"): version
        | {"Definition": {"Functions": [fn("b")]}},
    }
    client = RecordedClient(pages)
    progress: list[tuple[str, int, int]] = []
    account = asyncio.run(V1Reader(client, lambda *p: progress.append(p)).read([]))
    assert [g.info["Id"] for g in account.groups] == [uid(1), uid(2)]
    (read,) = account.definitions.values()
    assert [f["Id"] for f in read.versions[0]["Definition"]["Functions"]] == ["a", "b"]
    assert "NextToken" not in read.versions[0]
    assert account.calls == len(client.requests) == 2 + 2 * 2 + 2 + 1 + 1 + 2
    assert ("groups", 2, 2) in progress
    assert ("function definitions", 1, 1) in progress
