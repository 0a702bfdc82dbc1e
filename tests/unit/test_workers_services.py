# SPDX-License-Identifier: Apache-2.0
"""edge.workers.services: get_secret_value answers, access checks and V1-style errors."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from edge.ipc.protocol import (
    OP_CORE_STATUS,
    OP_GET_SECRET_VALUE_V1,
    OP_LIST_SECRETS,
    Request,
    Response,
)
from edge.ipc.server import WorkerIdentity
from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents
from edge.secrets.index import FixedIndex, SecretIndex
from edge.workers.services import (
    MAX_CACHED_V1_REQUESTS,
    OPERATOR_IDENTITY,
    CoreServices,
    ServiceError,
    get_secret_value,
    v1_request_args,
)
from edge.workers.spec import CodeRef, FunctionSpec

SM = "arn:aws:secretsmanager:us-west-2:123456789012:secret:"
API_KEY_NAME = "greengrass-SomeSecret"
API_KEY_ARN = SM + API_KEY_NAME + "-KUj89s"
CERT_NAME = "device/cert"
CERT_ARN = SM + CERT_NAME + "-Ab12Cd"
DB_NAME = "db-password"
DB_ARN = SM + DB_NAME + "-Zz9Yy8"

LAMBDA = "arn:aws:lambda:us-west-2:123456789012:function:"
READER = LAMBDA + "reader:1"
CERT_ONLY = LAMBDA + "certs:4"
NOBODY = LAMBDA + "nobody:1"

CURRENT_VALUE = "new-value-7f3a"
LABEL1_VALUE = "old-value-c91d"
CERT_VALUE = b"\x00\x01binary-cert\xff\xfe"
DB_VALUE = "db-value-44e2"


def store(
    current: str = CURRENT_VALUE,
    label1: str = LABEL1_VALUE,
    cert: bytes = CERT_VALUE,
    db: str = DB_VALUE,
) -> StoreContents:
    """Three deployed secrets: AWSCURRENT and Label1 on different versions, a binary, another."""
    api_key = LocalSecret(
        resource_id="api-key",
        arn=API_KEY_ARN,
        name=API_KEY_NAME,
        labels={"AWSCURRENT": "v2", "Label1": "v1"},
        versions={
            "v1": SecretVersion("v1", ("Label1",), 1_700_000_000.25, secret_string=label1),
            "v2": SecretVersion(
                "v2", ("AWSCURRENT", "Label2"), 1_700_000_100.5, secret_string=current
            ),
        },
    )
    certificate = LocalSecret(
        resource_id="cert",
        arn=CERT_ARN,
        name=CERT_NAME,
        labels={"AWSCURRENT": "b1"},
        versions={"b1": SecretVersion("b1", ("AWSCURRENT",), 1_600_000_000.0, secret_binary=cert)},
    )
    database = LocalSecret(
        resource_id="db",
        arn=DB_ARN,
        name=DB_NAME,
        labels={"AWSCURRENT": "d1"},
        versions={"d1": SecretVersion("d1", ("AWSCURRENT",), 1_650_000_000.0, secret_string=db)},
    )
    return StoreContents(secrets={s.resource_id: s for s in (api_key, certificate, database)})


def spec(arn: str, *resources: str) -> FunctionSpec:
    return FunctionSpec(
        function_id=arn.split(":")[6],
        function_arn=arn,
        handler="function.handler",
        code=CodeRef(uri="file:///opt/f.zip"),
        readable_resources=frozenset(resources),
    )


SPECS = (spec(READER, "api-key", "cert"), spec(CERT_ONLY, "cert"), spec(NOBODY))


def index_of(contents: StoreContents | None = None) -> SecretIndex:
    return SecretIndex.build(contents or store(), SPECS)


INDEX = index_of()


def failure(args: dict[str, Any], caller: str = READER, index: SecretIndex = INDEX) -> ServiceError:
    """Ask for a secret that must be refused; return the error."""
    with pytest.raises(ServiceError) as info:
        get_secret_value(index, caller, args)
    assert str(info.value) == info.value.message
    return info.value


# --- answers -----------------------------------------------------------------------------------


def test_by_name_answers_the_current_version_in_v1_shape():
    """A granted function asking by name gets AWSCURRENT, with V1's keys and types."""
    answer = get_secret_value(INDEX, READER, {"SecretId": API_KEY_NAME})
    assert answer == {
        "ARN": API_KEY_ARN,
        "Name": API_KEY_NAME,
        "VersionId": "v2",
        "VersionStages": ["AWSCURRENT", "Label2"],
        "CreatedDate": 1_700_000_100_500,
        "SecretString": CURRENT_VALUE,
    }
    assert type(answer["CreatedDate"]) is int
    assert type(answer["VersionStages"]) is list


def test_by_full_arn_gives_the_same_answer():
    """The full ARN names the secret as well as its name does."""
    assert get_secret_value(INDEX, READER, {"SecretId": API_KEY_ARN}) == get_secret_value(
        INDEX, READER, {"SecretId": API_KEY_NAME}
    )


def test_version_stage_selects_that_labels_version():
    """VersionStage Label1 answers the version Label1 is attached to, not AWSCURRENT's."""
    answer = get_secret_value(INDEX, READER, {"SecretId": API_KEY_NAME, "VersionStage": "Label1"})
    assert answer["VersionId"] == "v1"
    assert answer["VersionStages"] == ["Label1"]
    assert answer["SecretString"] == LABEL1_VALUE
    assert answer["CreatedDate"] == 1_700_000_000_250


def test_explicit_awscurrent_is_the_default():
    """VersionStage AWSCURRENT is what asking without a version gives."""
    args = {"SecretId": API_KEY_NAME, "VersionStage": "AWSCURRENT"}
    assert get_secret_value(INDEX, READER, args)["VersionId"] == "v2"


@pytest.mark.parametrize("absent", ["", None])
def test_empty_or_null_version_fields_mean_not_given(absent):
    """The V1 SDK sends "" for an omitted VersionId/VersionStage; null means the same."""
    args = {"SecretId": API_KEY_NAME, "VersionId": absent, "VersionStage": absent}
    assert get_secret_value(INDEX, READER, args)["VersionId"] == "v2"


def test_version_id_held_is_answered():
    """A VersionId the core holds is answered, whatever labels it has."""
    answer = get_secret_value(INDEX, READER, {"SecretId": API_KEY_ARN, "VersionId": "v1"})
    assert (answer["VersionId"], answer["SecretString"]) == ("v1", LABEL1_VALUE)


def test_version_id_not_held_is_404():
    """A VersionId the core doesn't hold is 404, naming the version and the secret."""
    error = failure({"SecretId": API_KEY_NAME, "VersionId": "v0"})
    assert error.status == 404
    assert "'v0'" in error.message
    assert API_KEY_NAME in error.message


def test_binary_secret_is_base64_text():
    """A SecretBinary value comes back as base64 text, and no SecretString key."""
    answer = get_secret_value(INDEX, CERT_ONLY, {"SecretId": CERT_NAME})
    assert answer["SecretBinary"] == base64.b64encode(CERT_VALUE).decode("ascii")
    assert base64.b64decode(answer["SecretBinary"]) == CERT_VALUE
    assert "SecretString" not in answer
    assert answer["CreatedDate"] == 1_600_000_000_000


def test_index_is_by_name_and_arn_with_grants_per_function():
    """SecretIndex holds each secret under its name and its ARN, and each function's grants."""
    assert sorted(INDEX.by_id) == sorted(
        [API_KEY_NAME, API_KEY_ARN, CERT_NAME, CERT_ARN, DB_NAME, DB_ARN]
    )
    assert INDEX.grants == {
        READER: frozenset({"api-key", "cert"}),
        CERT_ONLY: frozenset({"cert"}),
        NOBODY: frozenset(),
    }


def test_empty_index_knows_nothing():
    """Before any deployment every secret is unknown."""
    assert failure({"SecretId": API_KEY_NAME}, index=SecretIndex()).status == 404


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param({}, id="no-secret-id"),
        pytest.param({"SecretId": ""}, id="empty-secret-id"),
        pytest.param({"SecretId": None}, id="null-secret-id"),
        pytest.param({"SecretId": 7}, id="number-secret-id"),
        pytest.param({"SecretId": [API_KEY_NAME]}, id="list-secret-id"),
        pytest.param({"SecretId": API_KEY_NAME.encode()}, id="bytes-secret-id"),
        pytest.param(
            {"SecretId": API_KEY_NAME, "VersionId": "v1", "VersionStage": "Label1"}, id="both"
        ),
        pytest.param({"SecretId": API_KEY_NAME, "VersionStage": 5}, id="number-stage"),
        pytest.param({"SecretId": API_KEY_NAME, "VersionId": ["v1"]}, id="list-version"),
        pytest.param({"SecretId": API_KEY_NAME, "VersionStage": b"Label1"}, id="bytes-stage"),
        pytest.param({"SecretId": API_KEY_NAME, "VersionStage": 0}, id="zero-stage"),
        pytest.param({"SecretId": API_KEY_NAME, "VersionStage": False}, id="false-stage"),
        pytest.param({"SecretId": API_KEY_NAME, "VersionId": []}, id="empty-list-version"),
        pytest.param({"SecretId": API_KEY_NAME, "VersionId": {}}, id="empty-map-version"),
    ],
)
def test_malformed_requests_are_400(args):
    """A missing or non-string SecretId, both version fields, or non-string ones are 400."""
    assert failure(args).status == 400


def test_both_version_fields_message():
    """Asking for a VersionId and a VersionStage at once says they can't both be given."""
    error = failure({"SecretId": API_KEY_NAME, "VersionId": "v1", "VersionStage": "AWSCURRENT"})
    assert error.message == "VersionId and VersionStage cannot both be specified"


@pytest.mark.parametrize(
    ("caller", "secret_id", "name", "resource"),
    [
        (CERT_ONLY, API_KEY_NAME, API_KEY_NAME, "api-key"),
        (CERT_ONLY, API_KEY_ARN, API_KEY_NAME, "api-key"),
        (READER, DB_NAME, DB_NAME, "db"),
        (NOBODY, CERT_ARN, CERT_NAME, "cert"),
        (LAMBDA + "reader:2", API_KEY_NAME, API_KEY_NAME, "api-key"),
        (LAMBDA + "stranger:1", CERT_NAME, CERT_NAME, "cert"),
    ],
)
def test_secret_not_granted_is_403_naming_function_secret_and_resource(
    caller, secret_id, name, resource
):
    """A function without a policy for the secret's resource is refused, and told how to fix it."""
    error = failure({"SecretId": secret_id}, caller=caller)
    assert error.status == 403
    assert caller in error.message
    assert repr(name) in error.message
    assert repr(resource) in error.message
    assert "ResourceAccessPolicies" in error.message


def test_403_comes_before_any_version_check():
    """An ungranted caller learns nothing about which versions or labels exist."""
    for args in ({"VersionId": "v1"}, {"VersionId": "nope"}, {"VersionStage": "Nope"}):
        assert failure({"SecretId": API_KEY_NAME, **args}, caller=CERT_ONLY).status == 403


def test_unknown_secret_is_404_naming_it():
    """A secret that isn't deployed to this core is 404."""
    error = failure({"SecretId": "not-deployed"})
    assert error.status == 404
    assert "'not-deployed'" in error.message


def test_undeployed_label_is_404_naming_the_label():
    """A staging label the group didn't ask to download is 404, naming it and the secret."""
    error = failure({"SecretId": API_KEY_NAME, "VersionStage": "AWSPREVIOUS"})
    assert error.status == 404
    assert "'AWSPREVIOUS'" in error.message
    assert repr(API_KEY_NAME) in error.message
    assert "AdditionalStagingLabelsToDownload" in error.message


def test_label_only_in_version_stages_is_not_deployed():
    """Label2 is on a held version, but the group didn't deploy it: 404, no value."""
    assert failure({"SecretId": API_KEY_NAME, "VersionStage": "Label2"}).status == 404


@pytest.mark.parametrize(
    "secret_id",
    [
        pytest.param(SM + API_KEY_NAME, id="partial-arn"),
        pytest.param(API_KEY_ARN[:-1], id="truncated-arn"),
        pytest.param(API_KEY_ARN + "x", id="longer-arn"),
        pytest.param(API_KEY_ARN.upper(), id="upper-arn"),
        pytest.param(API_KEY_NAME + "/", id="trailing-slash"),
        pytest.param(CERT_NAME + "/", id="nested-trailing-slash"),
        pytest.param("device/", id="parent-path"),
        pytest.param("device", id="first-segment"),
        pytest.param(API_KEY_NAME.upper(), id="upper-name"),
        pytest.param(API_KEY_NAME.lower(), id="lower-name"),
        pytest.param("../" + API_KEY_NAME, id="dot-dot"),
        pytest.param("device/../" + CERT_NAME, id="dot-dot-inside"),
        pytest.param("./" + API_KEY_NAME, id="dot-slash"),
        pytest.param(API_KEY_NAME + "*", id="star"),
        pytest.param("greengrass-*", id="prefix-star"),
        pytest.param("*", id="star-alone"),
        pytest.param(API_KEY_NAME[:-1], id="name-prefix"),
        pytest.param(API_KEY_NAME + "-KUj89s", id="name-with-suffix"),
        pytest.param(" " + API_KEY_NAME, id="leading-space"),
        pytest.param(API_KEY_NAME + "\n", id="trailing-newline"),
        pytest.param(API_KEY_NAME + "\0", id="trailing-nul"),
        pytest.param("api-key", id="resource-id"),
        pytest.param("v2", id="version-id"),
    ],
)
def test_only_exact_names_and_arns_are_found(secret_id):
    """Anything but a deployed name or full ARN, however close, is 404 with no value."""
    error = failure({"SecretId": secret_id})
    assert error.status == 404


DEPLOYED_IDS = frozenset(INDEX.by_id)
near_misses = st.one_of(
    st.text(min_size=1),
    st.sampled_from(sorted(DEPLOYED_IDS)).flatmap(
        lambda real: st.one_of(
            st.integers(0, len(real) - 1).map(lambda n: real[:n] or "x"),
            st.text(min_size=1, max_size=3).map(lambda extra: real + extra),
            st.text(min_size=1, max_size=3).map(lambda extra: extra + real),
            st.just(real.swapcase()),
            st.integers(0, len(real) - 1).flatmap(
                lambda i: st.characters().map(lambda c: real[:i] + c + real[i + 1 :])
            ),
        )
    ),
)


@given(secret_id=near_misses, caller=st.sampled_from([READER, CERT_ONLY, NOBODY]))
def test_no_string_but_a_deployed_id_reveals_a_value(secret_id, caller):
    """Any SecretId that isn't exactly a deployed name or ARN is 404 for every caller."""
    assume(secret_id not in DEPLOYED_IDS)
    with pytest.raises(ServiceError) as info:
        get_secret_value(INDEX, caller, {"SecretId": secret_id})
    assert info.value.status == 404


# --- no value in any message --------------------------------------------------------------------

FAILING_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (READER, {}),
    (READER, {"SecretId": API_KEY_NAME, "VersionId": "v1", "VersionStage": "Label1"}),
    (READER, {"SecretId": API_KEY_NAME, "VersionStage": 3}),
    (READER, {"SecretId": "unknown"}),
    (READER, {"SecretId": DB_NAME}),
    (CERT_ONLY, {"SecretId": API_KEY_ARN}),
    (NOBODY, {"SecretId": CERT_NAME}),
    (READER, {"SecretId": API_KEY_NAME, "VersionId": "v9"}),
    (READER, {"SecretId": API_KEY_NAME, "VersionStage": "AWSPREVIOUS"}),
    (READER, {"SecretId": CERT_ARN, "VersionStage": "Label1"}),
]


def messages(index: SecretIndex) -> list[str]:
    out = []
    for caller, args in FAILING_REQUESTS:
        with pytest.raises(ServiceError) as info:
            get_secret_value(index, caller, args)
        out.append(info.value.message)
    return out


REFERENCE_MESSAGES = messages(INDEX)


@given(
    current=st.text(min_size=1),
    label1=st.text(min_size=1),
    db=st.text(min_size=1),
    cert=st.binary(min_size=1),
)
def test_error_messages_never_carry_a_secret_value(current, label1, db, cert):
    """Every error message is the same whatever the values are, so none can leak one."""
    index = index_of(store(current=current, label1=label1, cert=cert, db=db))
    found = messages(index)
    assert found == REFERENCE_MESSAGES
    for message in found:
        for value in (current, label1, db, base64.b64encode(cert).decode()):
            # A value can only appear by coincidence, as a piece of the fixed message text.
            assert value not in message or value in "".join(REFERENCE_MESSAGES)


def test_grants_follow_the_specs_given():
    """Rebuilding the index with new specs changes who may read what."""
    index = SecretIndex.build(store(), (replace(SPECS[1], readable_resources=frozenset()),))
    assert failure({"SecretId": CERT_NAME}, caller=CERT_ONLY, index=index).status == 403
    assert failure({"SecretId": CERT_NAME}, caller=READER, index=index).status == 403


def v1_call(payload: bytes, caller: str = READER) -> Response:
    """Ask CoreServices the way the greengrasssdk compat layer does: the SDK's JSON as is."""
    services = CoreServices(manager=None, publish=None, secrets=FixedIndex(INDEX))  # type: ignore[arg-type]
    request = Request(7, OP_GET_SECRET_VALUE_V1, {"Payload": payload})
    answer = services(WorkerIdentity(caller), request)
    assert isinstance(answer, Response)  # secrets are answered synchronously
    return answer


def test_v1_json_requests_get_the_v1_json_answer():
    """The SDK's own JSON request gets V1's JSON answer, the same as the native read's."""
    sdk_request = json.dumps({"SecretId": API_KEY_NAME, "VersionId": "", "VersionStage": "Label1"})
    for _ in range(2):  # the second time from the parsed-request cache
        answer = v1_call(sdk_request.encode())
        assert answer.ok
        assert answer.result is not None
        native = get_secret_value(
            INDEX, READER, {"SecretId": API_KEY_NAME, "VersionStage": "Label1"}
        )
        assert json.loads(answer.result["Payload"]) == native
        assert native["SecretString"] == LABEL1_VALUE


def test_v1_json_requests_are_access_checked_and_validated():
    """Refusals and bad JSON come back as V1 errors; a caller without a grant gets nothing."""
    refused = v1_call(json.dumps({"SecretId": API_KEY_NAME}).encode(), caller=CERT_ONLY)
    assert refused.error is not None
    assert refused.error["Status"] == 403
    assert v1_call(b"{not json").error == {"Status": 400, "Message": "the request is not JSON"}
    assert v1_call(b"[1, 2]").error == {
        "Status": 400,
        "Message": "the request is not a JSON object",
    }
    assert v1_call(json.dumps({"SecretId": "nope"}).encode()).error["Status"] == 404  # type: ignore[index]


def test_the_parsed_v1_request_cache_stays_bounded():
    """A worker sending endless distinct requests can't make the core's cache grow past its cap."""
    index = index_of()
    for i in range(MAX_CACHED_V1_REQUESTS + 10):
        v1_request_args(index, {"Payload": json.dumps({"SecretId": f"s{i}"}).encode()})
    assert len(index.v1_requests) <= MAX_CACHED_V1_REQUESTS


def test_answers_are_encoded_once_and_decode_to_the_answer():
    """The pre-encoded answers the IPC splices in carry exactly the answer's map."""
    for answer in INDEX.answers.values():
        assert msgpack.unpackb(answer.packed) == answer.result
        assert msgpack.unpackb(answer.v1_packed) == answer.v1_result


def test_only_the_operator_gets_the_core_status_and_workers_list_only_their_grants():
    """`core.status` is the operator's; `list_secrets` names the caller's grants, no value."""
    services = CoreServices(manager=None, publish=None, secrets=FixedIndex(INDEX))  # type: ignore[arg-type]
    services.status_report = lambda: {"Running": True}

    def ask(caller: str, op: str) -> Response:
        answer = services(WorkerIdentity(caller), Request(3, op, {}))
        assert not isinstance(answer, Response)  # answered from a task, as other ops are
        return asyncio.run(_await(answer))

    refused = ask(READER, OP_CORE_STATUS)
    assert refused.error is not None
    assert refused.error["Status"] == 403
    assert ask(OPERATOR_IDENTITY, OP_CORE_STATUS).result == {"Running": True}
    listed = ask(READER, OP_LIST_SECRETS).result
    assert listed is not None
    assert [s["Name"] for s in listed["Secrets"]] == sorted(s["Name"] for s in listed["Secrets"])
    assert listed["Secrets"], "the reader is granted secrets in INDEX"
    assert ask(OPERATOR_IDENTITY, OP_LIST_SECRETS).result == {"Secrets": []}
    for secret in listed["Secrets"]:
        assert set(secret) == {"ARN", "Name", "Versions"}


async def _await(answer: Awaitable[Response]) -> Response:
    return await answer
