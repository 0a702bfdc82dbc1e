"""Tests for edge.model.deployment: parsing whole deployment documents, by example and property."""

from __future__ import annotations

import contextlib
import copy
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import DeploymentInvalidError
from edge.model import (
    MAX_DOCUMENT_BYTES,
    Connector,
    Deployment,
    DeploymentType,
    Function,
    Group,
    OtherResource,
    ResourceAccessPolicy,
    SecretResource,
    parse_deployment,
)

DEPLOYMENT_ID = "4b2a6c3e-9f0d-4f5e-8a1b-2c3d4e5f6a7b"
SECRET_ARN = "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-SomeSecret-KUj89s"


def document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "DeploymentId": DEPLOYMENT_ID,
        "DeploymentType": "NewDeployment",
        "GroupId": "9c0e1f2a-3b4c-5d6e-7f80-91a2b3c4d5e6",
        "GroupVersionId": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "CreatedAt": "2024-05-01T12:34:56.789Z",
        "Group": {
            "Resources": [
                {
                    "Id": "tok",
                    "Name": "Token",
                    "ResourceDataContainer": {
                        "SecretsManagerSecretResourceData": {"ARN": SECRET_ARN}
                    },
                }
            ]
        },
    }
    doc.update(overrides)
    return {key: value for key, value in doc.items() if value is not ...}


def rejected(payload: bytes | str | dict[str, Any]) -> DeploymentInvalidError:
    """Parse a document that must be invalid; return the error."""
    text = json.dumps(payload) if isinstance(payload, dict) else payload
    with pytest.raises(DeploymentInvalidError) as info:
        parse_deployment(text)
    return info.value


# --- valid documents -----------------------------------------------------------------------------


def test_valid_document() -> None:
    """A well-formed document parses into its fields, its group and the raw group."""
    doc = document()
    parsed = parse_deployment(json.dumps(doc).encode())
    assert parsed == Deployment(
        deployment_id=DEPLOYMENT_ID,
        deployment_type=DeploymentType.NEW,
        group_id=doc["GroupId"],
        group_version_id=doc["GroupVersionId"],
        created_at="2024-05-01T12:34:56.789Z",
        group=Group(
            secret_resources=(SecretResource(resource_id="tok", name="Token", arn=SECRET_ARN),)
        ),
        raw_group=doc["Group"],
    )


@pytest.mark.parametrize("deployment_type", list(DeploymentType))
def test_every_deployment_type(deployment_type: DeploymentType) -> None:
    """The three V1 deployment types are recognised, as StrEnum members."""
    parsed = parse_deployment(json.dumps(document(DeploymentType=deployment_type.value)))
    assert parsed.deployment_type is deployment_type
    assert parsed.deployment_type == deployment_type.value


@pytest.mark.parametrize("group", [..., None, {}])
def test_reset_may_omit_the_group(group: object) -> None:
    """A ResetDeployment without Group, with null or with {} carries the empty group."""
    parsed = parse_deployment(json.dumps(document(DeploymentType="ResetDeployment", Group=group)))
    assert parsed.group == Group()
    assert parsed.raw_group == {}


def test_reset_with_a_group_still_validates_it() -> None:
    """A ResetDeployment that does carry a group gets it checked like any other."""
    bad = {"Resources": [{"Id": "x"}]}
    error = rejected(document(DeploymentType="ResetDeployment", Group=bad))
    assert error.problem == 'Resources[0] (Id "x"): Name is missing'


@pytest.mark.parametrize(
    "created_at",
    ["2024-05-01T12:34:56Z", "2024-05-01T12:34:56.123456+02:00", "2024-05-01", "2024-05-01 12:34"],
)
def test_iso_timestamps(created_at: str) -> None:
    """CreatedAt accepts the ISO-8601 forms datetime.fromisoformat understands."""
    assert parse_deployment(json.dumps(document(CreatedAt=created_at))).created_at == created_at


def test_str_bytes_and_bytearray_payloads() -> None:
    """The payload may be text, bytes or a bytearray, with the same result."""
    text = json.dumps(document())
    from_bytearray = parse_deployment(bytearray(text.encode()))  # type: ignore[arg-type]
    assert parse_deployment(text) == parse_deployment(text.encode()) == from_bytearray


def test_unknown_top_level_keys_are_ignored() -> None:
    """Keys the model doesn't use are allowed, for documents from newer clouds."""
    assert parse_deployment(json.dumps(document(Extra={"x": [1]}))).deployment_id == DEPLOYMENT_ID


def test_document_of_exactly_the_maximum_size() -> None:
    """A document of exactly MAX_DOCUMENT_BYTES is accepted; one more byte is not."""
    text = json.dumps(document())
    padded = text + " " * (MAX_DOCUMENT_BYTES - len(text))
    assert parse_deployment(padded.encode()).deployment_id == DEPLOYMENT_ID
    error = rejected((padded + " ").encode())
    assert error.problem == (
        f"the document is {MAX_DOCUMENT_BYTES + 1} bytes, more than the "
        f"{MAX_DOCUMENT_BYTES} bytes allowed"
    )
    assert error.deployment_id is None


def test_oversized_text_counts_utf8_bytes() -> None:
    """For text payloads the limit applies to the UTF-8 encoding, not the character count."""
    text = json.dumps(document(Extra="é" * (MAX_DOCUMENT_BYTES // 2)), ensure_ascii=False)
    assert len(text) <= MAX_DOCUMENT_BYTES
    assert "more than the" in rejected(text).problem


# --- rejected documents --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "the document is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"{", "the document is not valid JSON"),
        (b"\xff\xfe{}", "the document is not UTF-8 (invalid byte at offset 0)"),
        (b'{"a": "\xc3"}', "the document is not UTF-8 (invalid byte at offset 7)"),
        (b"\xef\xbb\xbf{}", "the document is not valid JSON: Unexpected UTF-8 BOM"),
        ('{"a": "\ud800"}', "the document is not valid Unicode text (it holds a lone surrogate)"),
        (b"[]", "the document must be a JSON object, not an array"),
        (b'"text"', "the document must be a JSON object, not a string"),
        (b"null", "the document must be a JSON object, not null"),
        (b"1e400", "the document must be a JSON object, not a number"),
        (b"[" * 100_000, "the document is nested too deeply to parse"),
        (b'{"a": NaN}', "the document is not valid JSON: NaN is not a JSON value"),
        (b'{"a": -Infinity}', "the document is not valid JSON: -Infinity is not a JSON value"),
        (b'{"a": ' + b"9" * 5000 + b"}", "the document is not valid JSON: Exceeds the limit"),
        (b"x" * (MAX_DOCUMENT_BYTES + 1), "the document is 1048577 bytes, more than the 1048576"),
    ],
)
def test_unreadable_documents(payload: bytes | str, expected: str) -> None:
    """Payloads that aren't a bounded UTF-8 JSON object are rejected without a DeploymentId."""
    error = rejected(payload)
    assert error.problem.startswith(expected)
    assert error.deployment_id is None


def test_payload_of_another_type() -> None:
    """A payload that is neither bytes nor str is rejected, not crashed on."""
    error = rejected(memoryview(b"{}"))  # type: ignore[arg-type]
    assert error.problem == "the payload must be bytes or str, not memoryview"


def test_deep_nesting_anywhere_is_rejected_before_the_id_is_read() -> None:
    """Nesting too deep for the parser is rejected; the id can't be read then, so it isn't set."""
    deep = "[" * 50_000 + "]" * 50_000
    text = json.dumps(document()).replace('"Group": {', f'"Extra": {deep}, "Group": {{')
    error = rejected(text)
    assert error.problem == "the document is nested too deeply to parse"
    assert error.deployment_id is None


def test_infinite_numbers_are_rejected() -> None:
    """A number too large for a float (1e400 parses as infinity) is rejected, naming the entry."""
    text = json.dumps(document()).replace('"Name": "Token"', '"Name": "Token", "Size": 1e400')
    error = rejected(text)
    assert error.problem == 'Resources[0] (Id "tok") contains a number that is not finite'
    assert error.deployment_id == DEPLOYMENT_ID


@pytest.mark.parametrize(
    ("overrides", "expected", "has_id"),
    [
        ({"DeploymentId": ...}, "DeploymentId is missing", False),
        ({"DeploymentId": 42}, "DeploymentId must be a string, not a number", False),
        ({"DeploymentId": ""}, "DeploymentId must not be empty", False),
        ({"DeploymentId": "dep/+"}, 'DeploymentId "dep/+" must be 1-128 characters', False),
        ({"DeploymentType": ...}, "DeploymentType is missing", True),
        ({"DeploymentType": ["NewDeployment"]}, "DeploymentType must be a string", True),
        (
            {"DeploymentType": "newdeployment"},
            (
                'DeploymentType "newdeployment" is not one of NewDeployment, Redeployment, '
                "ResetDeployment"
            ),
            True,
        ),
        ({"GroupId": ...}, "GroupId is missing", True),
        ({"GroupId": 1}, "GroupId must be a string, not a number", True),
        ({"GroupId": "a b"}, 'GroupId "a b" must be 1-128 characters', True),
        ({"GroupVersionId": ...}, "GroupVersionId is missing", True),
        ({"GroupVersionId": None}, "GroupVersionId must be a string, not null", True),
        ({"CreatedAt": ...}, "CreatedAt is missing", True),
        ({"CreatedAt": 1714566896}, "CreatedAt must be a string, not a number", True),
        ({"CreatedAt": "yesterday"}, 'CreatedAt "yesterday" is not an ISO-8601 timestamp', True),
        ({"CreatedAt": "2024-13-01T00:00:00Z"}, 'CreatedAt "2024-13-01T00:00:00Z" is not', True),
        ({"CreatedAt": "2024-05-01T00:00:00" + "0" * 60}, "CreatedAt is longer than 64", True),
        ({"Group": ...}, "Group is missing; a NewDeployment must carry one", True),
        ({"Group": None}, "Group must be an object, not null", True),
        ({"Group": []}, "Group must be an object, not an array", True),
        (
            {"Group": {"Resources": [{"Id": "r", "Name": "n", "ResourceDataContainer": {}}]}},
            'Resources[0] (Id "r"): ResourceDataContainer must have exactly one key',
            True,
        ),
    ],
)
def test_bad_fields(overrides: dict[str, Any], expected: str, has_id: bool) -> None:  # noqa: FBT001
    """Each bad top-level field is named; the DeploymentId is kept whenever it was usable."""
    error = rejected(document(**overrides))
    assert error.problem.startswith(expected)
    assert error.deployment_id == (DEPLOYMENT_ID if has_id else None)
    assert str(error) == f"invalid deployment document: {error.problem}"


def test_redeployment_needs_a_group() -> None:
    """A Redeployment must carry its group."""
    error = rejected(document(DeploymentType="Redeployment", Group=...))
    assert error.problem == "Group is missing; a Redeployment must carry one"


def test_repeated_keys_are_rejected_and_keep_the_id() -> None:
    """A key repeated in one object is rejected, with the DeploymentId when that isn't the key."""
    text = json.dumps(document()).replace('"Name": "Token"', '"Name": "Token", "Name": "Other"')
    error = rejected(text)
    assert error.problem == 'key "Name" appears twice in one object; JSON keys must be unique'
    assert error.deployment_id == DEPLOYMENT_ID


def test_repeated_deployment_id_is_not_trusted() -> None:
    """If DeploymentId itself is repeated, no id is reported: which one is meant is unclear."""
    text = json.dumps(document()).replace("{", '{"DeploymentId": "other", ', 1)
    error = rejected(text)
    assert error.problem.startswith('key "DeploymentId" appears twice')
    assert error.deployment_id is None


def test_errors_quote_only_a_short_excerpt() -> None:
    """A huge bad field is quoted truncated; the message never echoes the document."""
    text = json.dumps(document(CreatedAt="9" * 60, GroupId="g" * 100_000))
    error = rejected(text)
    assert len(str(error)) < 300
    assert "g" * 200 not in str(error)


# --- properties ----------------------------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits
# st.text over a fixed alphabet rather than st.from_regex: same values, several times faster.
ids = st.text(ALNUM + ":_-", min_size=1, max_size=24)
partitions = st.sampled_from(["aws", "aws-cn", "aws-us-gov", "aws-iso-b"])
regions = st.sampled_from(["us-west-2", "eu-central-1", "cn-north-1", "us-gov-west-1"])
accounts = st.text(string.digits, min_size=12, max_size=12)
secret_names = st.text(ALNUM + "/_+=.@-", min_size=1, max_size=32)
suffixes = st.text(ALNUM, min_size=6, max_size=6)
# Printable, no whitespace: exactly what a staging label may hold (categories Z and C are the
# separators and the control, format, surrogate, private-use and unassigned characters).
label_texts = st.text(st.characters(exclude_categories=("Z", "C")), min_size=1, max_size=16)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
OTHER_KINDS = (
    "LocalDeviceResourceData",
    "LocalVolumeResourceData",
    "S3MachineLearningModelResourceData",
    "SageMakerMachineLearningModelResourceData",
)


@dataclass
class Generated:
    """A valid document and the model it must parse into."""

    document: dict[str, Any]
    group: Group


@st.composite
def secret_arns(draw: st.DrawFn, count: int) -> list[str]:
    """Draw `count` full ARNs of pairwise different secrets."""
    parts = draw(
        st.lists(
            st.tuples(partitions, regions, accounts, secret_names, suffixes),
            min_size=count,
            max_size=count,
            unique_by=lambda p: p[:4],
        )
    )
    return [f"arn:{p}:secretsmanager:{r}:{a}:secret:{n}-{s}" for p, r, a, n, s in parts]


@st.composite
def groups(draw: st.DrawFn, *, at_least: int = 0) -> tuple[dict[str, Any], Group]:
    """Draw a valid group (JSON and model); `at_least` of each kind of entry when > 0."""
    n_secrets = draw(st.integers(at_least, 4))
    n_others = draw(st.integers(0, 2))
    resource_ids = draw(
        st.lists(ids, min_size=n_secrets + n_others, max_size=n_secrets + n_others, unique=True)
    )
    arns = draw(secret_arns(n_secrets))
    resources_json: list[dict[str, Any]] = []
    secrets: list[SecretResource] = []
    others: list[OtherResource] = []
    for rid, arn in zip(resource_ids, arns, strict=False):
        labels = draw(st.lists(label_texts, max_size=3))
        name = draw(ids)
        data: dict[str, Any] = {"ARN": arn}
        keep_empty = draw(st.booleans())
        if labels or keep_empty:
            data["AdditionalStagingLabelsToDownload"] = labels
        resources_json.append(
            {
                "Id": rid,
                "Name": name,
                "ResourceDataContainer": {"SecretsManagerSecretResourceData": data},
            }
        )
        secrets.append(
            SecretResource(resource_id=rid, name=name, arn=arn, additional_labels=tuple(labels))
        )
    for rid in resource_ids[n_secrets:]:
        container = draw(st.sampled_from(OTHER_KINDS))
        resources_json.append(
            {"Id": rid, "Name": "other", "ResourceDataContainer": {container: {"SourcePath": "/x"}}}
        )
        others.append(OtherResource(resource_id=rid, name="other", kind=container))
    draw(st.randoms()).shuffle(resources_json)

    functions_json, functions = draw(_functions(secrets, others, at_least))
    connectors_json, connectors = draw(_connectors(secrets, at_least))
    subscriptions_json = [
        {"Id": sid, "Source": "cloud", "Subject": draw(st.text(min_size=1)), "Target": "x"}
        for sid in draw(st.lists(ids, min_size=at_least, max_size=3, unique=True))
    ]
    sections = {
        "Resources": resources_json,
        "Functions": functions_json,
        "Connectors": connectors_json,
        "Subscriptions": subscriptions_json,
    }
    # Empty lists are sometimes left out: absent means empty.
    keep_sections = draw(st.lists(st.booleans(), min_size=4, max_size=4))
    group_json = {
        key: value
        for (key, value), keep in zip(sections.items(), keep_sections, strict=True)
        if value or keep
    }
    if draw(st.booleans()):
        group_json["Cores"] = [{"Id": "core", "ThingArn": "arn:aws:iot:x"}]
    # The model keeps resources by kind in document order, whatever the shuffle did.
    order = [entry["Id"] for entry in resources_json]
    model = Group(
        secret_resources=tuple(sorted(secrets, key=lambda r: order.index(r.resource_id))),
        other_resources=tuple(sorted(others, key=lambda r: order.index(r.resource_id))),
        functions=functions,
        connectors=connectors,
        subscriptions=tuple(subscriptions_json),
    )
    return group_json, model


@st.composite
def _functions(
    draw: st.DrawFn, secrets: list[SecretResource], others: list[OtherResource], at_least: int
) -> tuple[list[dict[str, Any]], tuple[Function, ...]]:
    """Draw functions whose policies grant existing resources with allowed permissions."""
    entries: list[dict[str, Any]] = []
    models: list[Function] = []
    options = [(r.resource_id, True) for r in secrets] + [(r.resource_id, False) for r in others]
    for fid in draw(st.lists(ids, min_size=at_least, max_size=3, unique=True)):
        granted = draw(st.lists(st.sampled_from(options), unique=True)) if options else []
        policies = [
            ResourceAccessPolicy(
                resource_id=rid,
                permission="ro" if is_secret else draw(st.sampled_from(["ro", "rw"])),
            )
            for rid, is_secret in granted
        ]
        environment: dict[str, Any] = {
            "ResourceAccessPolicies": [
                {"ResourceId": p.resource_id, "Permission": p.permission} for p in policies
            ],
            "Variables": draw(st.dictionaries(st.text(), st.text(), max_size=2)),
            "AccessSysfs": draw(st.booleans()),
        }
        config = {
            "Pinned": draw(st.booleans()),
            "MemorySize": draw(st.integers(1, 1 << 20)),
            "Timeout": draw(st.integers(1, 900)),
            "Environment": environment,
            "Extra": draw(json_values),
        }
        entry: dict[str, Any] = {
            "Id": fid,
            "FunctionArn": f"arn:aws:lambda:::function:{fid}",
            "FunctionConfiguration": config,
        }
        entries.append(entry)
        models.append(
            Function(
                function_id=fid,
                function_arn=entry["FunctionArn"],
                access_policies=tuple(policies),
                raw=copy.deepcopy(entry),
            )
        )
    return entries, tuple(models)


@st.composite
def _connectors(
    draw: st.DrawFn, secrets: list[SecretResource], at_least: int
) -> tuple[list[dict[str, Any]], tuple[Connector, ...]]:
    """Draw connectors whose -ResourceId parameters pair correctly with secret ARNs."""
    entries: list[dict[str, Any]] = []
    models: list[Connector] = []
    for cid in draw(st.lists(ids, min_size=at_least, max_size=3, unique=True)):
        # Free-form parameters start with "x" so they can't collide with the paired ones below.
        params = {
            "x" + key: value
            for key, value in draw(st.dictionaries(st.text(), st.text(), max_size=3)).items()
            if not key.endswith("-ResourceId")
        }
        used = draw(st.lists(st.sampled_from(secrets), unique=True)) if secrets else []
        for index, resource in enumerate(used):
            params[f"Secret{index}Arn-ResourceId"] = resource.resource_id
            if draw(st.booleans()):
                params[f"Secret{index}Arn"] = resource.arn
        entries.append({"Id": cid, "ConnectorArn": "arn:aws:greengrass:::c", "Parameters": params})
        models.append(
            Connector(connector_id=cid, connector_arn="arn:aws:greengrass:::c", parameters=params)
        )
    return entries, tuple(models)


@st.composite
def generated(draw: st.DrawFn, *, at_least: int = 0) -> Generated:
    """Draw a valid deployment document and the Group it describes."""
    group_json, model = draw(groups(at_least=at_least))
    created = draw(st.datetimes(timezones=st.none() | st.just(UTC)))
    doc = {
        "DeploymentId": draw(ids),
        "DeploymentType": draw(st.sampled_from(list(DeploymentType))).value,
        "GroupId": draw(ids),
        "GroupVersionId": draw(ids),
        "CreatedAt": created.isoformat(),
        "Group": group_json,
    }
    return Generated(document=doc, group=model)


# Counts here are a unit test's; bench/fuzz.py feeds the parser 100,000 hostile inputs.
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=generated(), as_bytes=st.booleans())
def test_round_trip(case: Generated, as_bytes: bool) -> None:  # noqa: FBT001
    """Any valid document, serialised to JSON and parsed back, gives the fields it was made of."""
    text = json.dumps(case.document)
    parsed = parse_deployment(text.encode() if as_bytes else text)
    doc = case.document
    assert parsed.deployment_id == doc["DeploymentId"]
    assert parsed.deployment_type == doc["DeploymentType"]
    assert (parsed.group_id, parsed.group_version_id) == (doc["GroupId"], doc["GroupVersionId"])
    assert parsed.created_at == doc["CreatedAt"]
    assert parsed.group == case.group
    assert parsed.raw_group == doc["Group"]
    for function in parsed.group.functions:
        assert all(function.may_read(p.resource_id) for p in function.access_policies)
    for connector in parsed.group.connectors:
        assert len(parsed.group.connector_secrets(connector)) == len(
            connector.secret_resource_ids()
        )


# Mutations: each breaks exactly one rule of a valid document (with at least one entry of every
# kind) and says what the message must contain.
Draw = Callable[[st.SearchStrategy[Any]], Any]
Mutation = Callable[[dict[str, Any], Draw], str]


def _entry(doc: dict[str, Any], section: str, draw: Draw) -> tuple[int, dict[str, Any]]:
    entries = doc["Group"][section]
    index = draw(st.integers(0, len(entries) - 1))
    return index, entries[index]


def _secret_entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in doc["Group"]["Resources"]
        if "SecretsManagerSecretResourceData" in e["ResourceDataContainer"]
    ]


def dup_resource_id(doc: dict[str, Any], draw: Draw) -> str:
    _, entry = _entry(doc, "Resources", draw)
    doc["Group"]["Resources"].append(copy.deepcopy(entry))
    return "resource ids must be unique"


def same_secret_again(doc: dict[str, Any], draw: Draw) -> str:
    entry = copy.deepcopy(draw(st.sampled_from(_secret_entries(doc))))
    entry["Id"] = "a-fresh-id-not-drawn-by-ids-strategy-" + "z" * 40
    data = entry["ResourceDataContainer"]["SecretsManagerSecretResourceData"]
    data["ARN"] = data["ARN"][:-6] + draw(suffixes)
    doc["Group"]["Resources"].append(entry)
    return "a group may reference a secret only once"


def malformed_arn(doc: dict[str, Any], draw: Draw) -> str:
    data = draw(st.sampled_from(_secret_entries(doc)))["ResourceDataContainer"][
        "SecretsManagerSecretResourceData"
    ]
    arn = data["ARN"]
    data["ARN"] = draw(
        st.sampled_from(
            [
                arn[:-1],
                arn.replace("secretsmanager", "ssm"),
                arn + " ",
                arn.replace(":secret:", ":"),
            ]
        )
    )
    return "ARN is invalid: "


def bad_label(doc: dict[str, Any], draw: Draw) -> str:
    data = draw(st.sampled_from(_secret_entries(doc)))["ResourceDataContainer"][
        "SecretsManagerSecretResourceData"
    ]
    labels = data.setdefault("AdditionalStagingLabelsToDownload", [])
    labels.insert(
        draw(st.integers(0, len(labels))), draw(st.sampled_from(["", "a b", "x" * 257, 1]))
    )
    return "AdditionalStagingLabelsToDownload["


def dup_function_id(doc: dict[str, Any], draw: Draw) -> str:
    _, entry = _entry(doc, "Functions", draw)
    doc["Group"]["Functions"].append(copy.deepcopy(entry))
    return "function ids must be unique"


def policy_on_missing_resource(doc: dict[str, Any], draw: Draw) -> str:
    _, entry = _entry(doc, "Functions", draw)
    policies = entry["FunctionConfiguration"]["Environment"]["ResourceAccessPolicies"]
    policies.append({"ResourceId": "no.such.resource", "Permission": "ro"})
    return '"no.such.resource" names no resource of the group'


def rw_on_secret(doc: dict[str, Any], draw: Draw) -> str:
    _, entry = _entry(doc, "Functions", draw)
    policies = entry["FunctionConfiguration"]["Environment"]["ResourceAccessPolicies"]
    rid = draw(st.sampled_from(_secret_entries(doc)))["Id"]
    policies[:] = [p for p in policies if p["ResourceId"] != rid]
    policies.append({"ResourceId": rid, "Permission": "rw"})
    return 'only "ro" is allowed on a secret resource'


def unknown_permission(doc: dict[str, Any], draw: Draw) -> str:
    _, entry = _entry(doc, "Functions", draw)
    policies = entry["FunctionConfiguration"]["Environment"]["ResourceAccessPolicies"]
    rid = draw(st.sampled_from(doc["Group"]["Resources"]))["Id"]
    policies[:] = [p for p in policies if p["ResourceId"] != rid]
    policies.append({"ResourceId": rid, "Permission": draw(st.sampled_from(["RO", "w", "", 1]))})
    return "Permission"


def dup_connector_id(doc: dict[str, Any], draw: Draw) -> str:
    _, entry = _entry(doc, "Connectors", draw)
    doc["Group"]["Connectors"].append(copy.deepcopy(entry))
    return "connector ids must be unique"


def connector_missing_resource(doc: dict[str, Any], draw: Draw) -> str:
    _, entry = _entry(doc, "Connectors", draw)
    entry["Parameters"]["AuthSecretArn-ResourceId"] = "no.such.resource"
    return '"no.such.resource" names no resource of the group'


def connector_wrong_arn(doc: dict[str, Any], draw: Draw) -> str:
    _, entry = _entry(doc, "Connectors", draw)
    resources = _secret_entries(doc)
    target = draw(st.sampled_from(resources))
    arn = target["ResourceDataContainer"]["SecretsManagerSecretResourceData"]["ARN"]
    entry["Parameters"]["AuthSecretArn-ResourceId"] = target["Id"]
    other_suffix = "YYYYYY" if arn.endswith("ZZZZZZ") else "ZZZZZZ"
    entry["Parameters"]["AuthSecretArn"] = draw(
        st.sampled_from([arn[:-6] + other_suffix, arn + "x", ""])
    )
    return "is not the ARN of resource"


REQUIRED = [
    ("Resources", "Id"),
    ("Resources", "Name"),
    ("Resources", "ResourceDataContainer"),
    ("Functions", "Id"),
    ("Functions", "FunctionArn"),
    ("Connectors", "Id"),
    ("Connectors", "ConnectorArn"),
    ("Subscriptions", "Id"),
    ("Subscriptions", "Source"),
    ("Subscriptions", "Subject"),
    ("Subscriptions", "Target"),
]


def required_key_missing(doc: dict[str, Any], draw: Draw) -> str:
    section, key = draw(st.sampled_from(REQUIRED))
    _, entry = _entry(doc, section, draw)
    del entry[key]
    return f"{key} is missing"


def required_key_wrong_type(doc: dict[str, Any], draw: Draw) -> str:
    section, key = draw(st.sampled_from(REQUIRED))
    _, entry = _entry(doc, section, draw)
    entry[key] = draw(st.sampled_from([0, 1.5, True, None, [], ["x"]]))
    return f"{key} must be a"


def bad_top_level(doc: dict[str, Any], draw: Draw) -> str:
    key, value = draw(
        st.sampled_from(
            [
                ("DeploymentType", "Deploy"),
                ("CreatedAt", "not a date"),
                ("GroupId", "has space"),
                ("GroupVersionId", ""),
                ("Group", []),
            ]
        )
    )
    doc[key] = value
    return str(key)


MUTATIONS: list[Mutation] = [
    dup_resource_id,
    same_secret_again,
    malformed_arn,
    bad_label,
    dup_function_id,
    policy_on_missing_resource,
    rw_on_secret,
    unknown_permission,
    dup_connector_id,
    connector_missing_resource,
    connector_wrong_arn,
    required_key_missing,
    required_key_wrong_type,
    bad_top_level,
]


# Every mutation on every drawn document: drawing a document costs far more than parsing it.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=generated(at_least=1), data=st.data())
def test_mutations_are_rejected(case: Generated, data: st.DataObject) -> None:
    """A mutation that breaks one rule is rejected, with the DeploymentId and the rule named."""
    for mutation in MUTATIONS:
        doc = copy.deepcopy(case.document)
        fragment = mutation(doc, data.draw)
        with pytest.raises(DeploymentInvalidError) as info:
            parse_deployment(json.dumps(doc))
        assert fragment in info.value.problem, mutation.__name__
        assert info.value.deployment_id == doc["DeploymentId"], mutation.__name__


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_raise_only_deployment_invalid(payload: bytes) -> None:
    """Arbitrary bytes never raise anything but DeploymentInvalidError."""
    with contextlib.suppress(DeploymentInvalidError):
        parse_deployment(payload)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_only_deployment_invalid(value: object) -> None:
    """Arbitrary JSON values never raise anything but DeploymentInvalidError."""
    with contextlib.suppress(DeploymentInvalidError):
        parse_deployment(json.dumps(value))


def _paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node inside a JSON value (not the root itself)."""
    found: list[tuple[Any, ...]] = []
    children = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


# Several replacements, each on its own copy, of each drawn document (see the mutations).
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=generated(at_least=1), data=st.data())
def test_replacing_any_node_raises_only_deployment_invalid(
    case: Generated, data: st.DataObject
) -> None:
    """Replacing any node of a valid document with arbitrary JSON parses or is rejected cleanly."""
    paths = _paths(case.document)
    for _ in range(5):
        doc = copy.deepcopy(case.document)
        path = data.draw(st.sampled_from(paths))
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = data.draw(json_values)
        try:
            parsed = parse_deployment(json.dumps(doc))
        except DeploymentInvalidError as exc:
            reported = exc.deployment_id
        else:
            # A ResetDeployment may carry "Group": null, which stands for the empty group.
            assert parsed.raw_group == (doc["Group"] or {})
            continue
        # Whatever broke, the id is reported while it is still usable.
        assert path == ("DeploymentId",) or reported == doc["DeploymentId"], path
