"""The API's routes: every operation of botocore's model is found from the path botocore sends."""

from __future__ import annotations

from typing import Any

from botocore.serialize import create_serializer

from edge.cloud.serve.routes import Router, decode_input, service_model

GROUP_ARN = "arn:aws:greengrass:us-west-2:123456789012:/greengrass/groups/0b7e2d4c-3a1f"


def _request(operation: str, labels: dict[str, str]) -> dict[str, Any]:
    model = service_model().operation_model(operation)
    params = {}
    for name, member in model.input_shape.members.items():
        if member.serialization.get("location") == "uri":
            params[name] = labels.get(name, f"id-of-{name}")
    request: dict[str, Any] = create_serializer(
        "rest-json", include_validation=False
    ).serialize_to_request(params, model)
    return request


def test_every_operation_is_routed_from_the_path_botocore_sends() -> None:
    """Each of the model's operations, serialised by botocore, reaches that operation.

    ARN labels (`/tags/{resource-arn}`) included: botocore percent-encodes the ARN into one
    segment, and the label's name holds a "-".
    """
    router = Router()
    model = service_model()
    for operation in model.operation_names:
        request = _request(operation, {"ResourceArn": GROUP_ARN})
        match = router.match(request["method"], request["url_path"])
        assert match.route.operation == operation


def test_an_arn_label_is_decoded_into_its_member() -> None:
    """ListTagsForResource's path gives ResourceArn back as the caller passed it."""
    request = _request("ListTagsForResource", {"ResourceArn": GROUP_ARN})
    assert "%3A" in request["url_path"]
    match = Router().match("GET", request["url_path"])
    params = decode_input(match, query="", headers={}, body=b"")
    assert params == {"ResourceArn": GROUP_ARN}
