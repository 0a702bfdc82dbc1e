# SPDX-License-Identifier: Apache-2.0
"""The Greengrass V1 REST API's routes and request shapes, read from botocore's service model.

botocore ships the model every AWS SDK and the AWS CLI serialise requests from, so reading the
routes and input shapes from it (rather than writing them out) makes this service accept
exactly what those clients send: the method and `requestUri` of each operation, and for each
input member where it travels (`uri`, `querystring`, `header`, or the JSON body). Decoded
requests are checked with botocore's own `ParamValidator`, the check clients run before
sending: required members, types, lengths, and no unknown keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

from botocore.session import get_session
from botocore.validate import ParamValidator

from edge.cloud.errors import CloudUsageError
from edge.cloud.jsontext import strict_json
from edge.cloud.serve.errors import ApiError, bad_request

SERVICE: Final = "greengrass"
#: A `{Label}` of a requestUri matches one path segment; `{Label+}` matches the rest. Labels may
#: hold "-" (`/tags/{resource-arn}`), which a regex group name can't: groups are numbered.
_LABEL: Final = re.compile(r"\{(?P<name>[A-Za-z0-9_-]+)(?P<greedy>\+?)\}")


@dataclass(frozen=True, slots=True)
class Route:
    """One operation: its name, method, path pattern and botocore operation model."""

    operation: str
    method: str
    pattern: re.Pattern[str]
    #: Characters of the template outside labels: a literal segment beats a label
    #: (`/deployments/$reset` over `/deployments/{DeploymentId}`).
    literal_length: int
    model: Any  # botocore.model.OperationModel (botocore has no type hints)
    #: The labels of the template, in order: group `l{i}` of `pattern` is label i.
    label_names: tuple[str, ...] = ()

    @property
    def status(self) -> int:
        """The HTTP status of a successful answer."""
        return int(self.model.http.get("responseCode", 200))


@dataclass(frozen=True, slots=True)
class Match:
    """A route and the (decoded) labels of the path it matched."""

    route: Route
    labels: dict[str, str]


@cache
def service_model() -> Any:  # noqa: ANN401 - botocore.model.ServiceModel, untyped
    """The Greengrass V1 model of botocore (loaded once: it is a 100 KB JSON file)."""
    return get_session().get_service_model(SERVICE)


def _compile(template: str) -> tuple[re.Pattern[str], int, tuple[str, ...]]:
    path = template.split("?", 1)[0]
    pieces, names, literal, end = [], [], 0, 0
    for index, label in enumerate(_LABEL.finditer(path)):
        text = path[end : label.start()]
        pieces.append(re.escape(text))
        literal += len(text)
        body = ".+" if label["greedy"] else "[^/]+"
        pieces.append(f"(?P<l{index}>{body})")
        names.append(label["name"])
        end = label.end()
    pieces.append(re.escape(path[end:]))
    literal += len(path) - end
    return re.compile("".join(pieces)), literal, tuple(names)


class Router:
    """Finds the operation of a request from its method and path."""

    def __init__(self, model: Any = None) -> None:  # noqa: ANN401 - botocore's ServiceModel
        model = model or service_model()
        routes = []
        for name in model.operation_names:
            op = model.operation_model(name)
            pattern, literal, names = _compile(op.http["requestUri"])
            routes.append(Route(name, op.http["method"].upper(), pattern, literal, op, names))
        self.routes: tuple[Route, ...] = tuple(
            sorted(routes, key=lambda r: r.literal_length, reverse=True)
        )

    def match(self, method: str, raw_path: str) -> Match:
        """Return the operation for `method raw_path` (the path as sent, percent-encoded).

        Raises:
            ApiError: No operation of the model has this method and path (404).
        """
        for route in self.routes:
            if route.method != method.upper():
                continue
            found = route.pattern.fullmatch(raw_path)
            if found is not None:
                labels = {
                    name: unquote(found[f"l{index}"])
                    for index, name in enumerate(route.label_names)
                }
                return Match(route, labels)
        raise ApiError(
            404,
            "UnknownOperationException",
            f"no Greengrass V1 operation is {method.upper()} {raw_path}",
        )


def decode_input(
    match: Match, *, query: str, headers: Mapping[str, str], body: bytes
) -> dict[str, Any]:
    """Build an operation's input parameters from a request, as botocore's client had them.

    Args:
        match: The matched route and path labels.
        query: The raw query string.
        headers: The request headers (case-insensitive mapping).
        body: The request body: a JSON object, or empty.

    Returns:
        The parameters, keyed by member name, validated against the input shape.

    Raises:
        ApiError: 400 BadRequestException naming what is missing, unknown or of the wrong type.
    """
    shape = match.route.model.input_shape
    if shape is None:
        return {}
    pairs = parse_qsl(query, keep_blank_values=True)
    params: dict[str, Any] = {}
    body_members: dict[str, str] = {}
    for name, member in shape.members.items():
        where = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if where is None:
            body_members[wire] = name
            continue
        values: list[str] = []
        if where == "uri" and wire in match.labels:
            values = [match.labels[wire]]
        elif where == "querystring":
            values = [v for k, v in pairs if k == wire]
        elif where == "header" and wire in headers:
            values = [headers[wire]]
        if values:
            params[name] = (
                values if member.type_name == "list" else _scalar(name, member, values[-1])
            )
    for key, value in _body_document(body).items():
        # Unknown keys are passed on under their own name, for the validator to refuse.
        params[body_members.get(key, key)] = value
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        raise bad_request(report.generate_report())
    return params


def _body_document(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8") from None
    try:
        document = strict_json("request body", text)
    except CloudUsageError as exc:
        raise bad_request(str(exc)) from None
    if not isinstance(document, dict):
        raise bad_request("the request body must be a JSON object")
    _check_text(document)
    return document


def _check_text(document: dict[str, Any]) -> None:
    """Refuse a string that is not Unicode text: JSON can escape a lone surrogate (U+D800).

    Such a string can't be encoded as UTF-8, so it could be neither stored nor logged; it is
    refused here naming where it is.
    """
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                stack.append((f"{where}.{key}" if where else key, key))
                stack.append((f"{where}.{key}" if where else key, child))
        elif isinstance(node, list):
            stack.extend((f"{where}[{index}]", child) for index, child in enumerate(node))
        elif isinstance(node, str) and not node.isascii():
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request(
                    f"{where}: holds a lone UTF-16 surrogate (such as \\ud800), which is not "
                    f"Unicode text"
                ) from None


def _scalar(name: str, member: Any, text: str) -> Any:  # noqa: ANN401 - by the member's type
    """Convert a path, query or header value to its member's type, as botocore serialised it."""
    kind = member.type_name
    if kind in {"integer", "long"}:
        try:
            return int(text)
        except ValueError:
            raise bad_request(f"{name} must be an integer, not {text!r}") from None
    if kind == "boolean":
        if text not in {"true", "false"}:
            raise bad_request(f"{name} must be true or false, not {text!r}")
        return text == "true"
    return text


def operation_names(model: Any = None) -> Iterable[str]:  # noqa: ANN401 - botocore model
    """Every operation the model describes."""
    return tuple((model or service_model()).operation_names)
