# SPDX-License-Identifier: Apache-2.0
"""Read groups and the definitions they name from the Greengrass V1 API, through aiobotocore.

Every List* call and every Get*DefinitionVersion that the API pages is followed through its
NextToken, so nothing is missed on a large account. Calls run a few at a time (AWS throttles
each account's requests, and botocore's standard retry mode backs off when it does), and each
one is counted for the summary. Until the API has answered once, a connection that can't be
made is tried only `FIRST_CONTACT_ATTEMPTS` times (`FirstContact`): a mistyped endpoint is
said within seconds, not after the backoff meant for a throttled account.

Only definitions that some group version names are read, each with all its versions: the
import copies groups, and a definition no group names is nobody's to run. Definitions of a kind
edge does not store (devices, loggers) are not read; the plan reports them by ARN.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from edge.cloud.config import CloudConfig
from edge.cloud.definitions import KINDS
from edge.cloud.errors import V1ImportError

#: Requests in flight at once: enough to hide latency, few enough not to be throttled hard.
CONCURRENCY: Final = 8
#: Attempts per request in botocore's standard retry mode (backoff with jitter on throttling
#: and on 5xx answers).
MAX_ATTEMPTS: Final = 8
#: Attempts per request at making a connection while the API has not answered yet: one retry,
#: after at most a second, for a blip; past that the endpoint is taken to be wrong or down.
FIRST_CONTACT_ATTEMPTS: Final = 2
#: A connection that couldn't be made: the endpoint is wrong, down, or not reachable from here.
_UNREACHABLE: Final = (EndpointConnectionError, ConnectTimeoutError)
_NOT_FOUND: Final = frozenset({"IdNotFoundException", "VersionNotFoundException", "404"})
_DENIED: Final = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "403",
    }
)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class V1Kind:
    """One kind of V1 definition, by the names its API and group versions use."""

    #: The API's noun: "Function" in GetFunctionDefinitionVersion.
    api: str
    #: The ARN path segment: "functions".
    segment: str
    #: The list a version holds: "Functions".
    list_key: str
    #: Whether Get…DefinitionVersion pages its list with NextToken.
    paged_get: bool

    @property
    def group_key(self) -> str:
        """The group version key naming a version of this kind."""
        return f"{self.api}DefinitionVersionArn"

    @property
    def label(self) -> str:
        """For messages and progress: "function definition"."""
        return f"{self.api.lower()} definition"

    @property
    def stored(self) -> bool:
        """Whether edge's control plane stores this kind (`edge.cloud.definitions.KINDS`)."""
        return self.api.lower() in KINDS

    def method(self, pattern: str) -> str:
        """A client method name: `get_{}_definition_version` -> get_function_definition_version."""
        return pattern.format(self.api.lower())

    def id_param(self) -> str:
        """The API's parameter naming a definition: FunctionDefinitionId."""
        return f"{self.api}DefinitionId"


#: The seven kinds of the V1 API, by group version key, in the order group versions list them.
V1_KINDS: Final = {
    kind.group_key: kind
    for kind in (
        V1Kind("Core", "cores", "Cores", paged_get=False),
        V1Kind("Device", "devices", "Devices", paged_get=True),
        V1Kind("Function", "functions", "Functions", paged_get=True),
        V1Kind("Subscription", "subscriptions", "Subscriptions", paged_get=True),
        V1Kind("Logger", "loggers", "Loggers", paged_get=True),
        V1Kind("Resource", "resources", "Resources", paged_get=False),
        V1Kind("Connector", "connectors", "Connectors", paged_get=True),
    )
}


@dataclass(slots=True)
class V1Definition:
    """A definition as GetXDefinition answers, with every version GetXDefinitionVersion gives."""

    kind: V1Kind
    info: dict[str, Any]
    versions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class V1Group:
    """A group as GetGroup answers, with every version as GetGroupVersion gives it."""

    info: dict[str, Any]
    versions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class V1Account:
    """What was read: the groups, and the definitions they name by (segment, id)."""

    groups: list[V1Group]
    definitions: dict[tuple[str, str], V1Definition]
    #: API requests made, retries not counted.
    calls: int = 0


Progress = Callable[[str, int, int], None]


class FirstContact:
    """A `needs-retry` handler: no retrying a connection failure before the API's first answer.

    Registered ahead of botocore's standard retry handler, it answers False (botocore's "don't
    retry", which the first non-None answer decides) for a connection that couldn't be made,
    after `FIRST_CONTACT_ATTEMPTS`, as long as no request has had an HTTP answer. Any answer,
    a throttling or 5xx one included, shows the endpoint is right; from then on every failure
    gets `MAX_ATTEMPTS` with backoff, as a network blip during a long import deserves.
    """

    def __init__(self) -> None:
        self.answered = False

    def __call__(
        self,
        response: object,
        attempts: int,
        caught_exception: BaseException | None,
        **_: Any,  # noqa: ANN401 - the event's other arguments
    ) -> bool | None:
        """False to stop retrying; None leaves the decision to botocore's standard mode."""
        if response is not None:
            self.answered = True
        unreachable = isinstance(caught_exception, _UNREACHABLE)
        if self.answered or not unreachable or attempts < FIRST_CONTACT_ATTEMPTS:
            return None
        return False


class V1Reader:
    """Reads one account's Greengrass V1 groups; `read()` is the entry point."""

    def __init__(self, client: Any, progress: Progress) -> None:  # noqa: ANN401 - aiobotocore client
        self._client = client
        self._progress = progress
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self.calls = 0

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:  # noqa: ANN401 - API params
        async with self._slots:
            self.calls += 1
            answer: dict[str, Any] = await getattr(self._client, method)(**params)
        answer.pop("ResponseMetadata", None)
        return answer

    async def _all_pages(self, method: str, key: str, **params: Any) -> list[Any]:  # noqa: ANN401
        """Every item of a paged answer's `key` list, following NextToken to the end."""
        items: list[Any] = []
        token: str | None = None
        while True:
            answer = await self._call(method, **params, **({"NextToken": token} if token else {}))
            items.extend(answer.get(key) or [])
            token = answer.get("NextToken")
            if not token:
                return items

    async def read(self, group_ids: list[str]) -> V1Account:
        """Read the groups (all, or those named) with their versions and definitions.

        Raises:
            V1ImportError: A named group does not exist, or the API can't be used (credentials,
                endpoint, permissions); the message says what to fix.
        """
        if group_ids:
            infos = await self._gather([self._group(g) for g in dict.fromkeys(group_ids)])
        else:
            infos = await self._all_pages("list_groups", "Groups")
        groups = [V1Group(info=info) for info in infos]
        await self._each("groups", groups, self._read_group_versions)
        account = V1Account(groups=groups, definitions={})
        named: dict[tuple[str, str], V1Kind] = {}
        for group in groups:
            for version in group.versions:
                for key, arn in (version.get("Definition") or {}).items():
                    kind = V1_KINDS.get(key)
                    parts = definition_id_of(arn)
                    if kind is not None and kind.stored and parts is not None:
                        named.setdefault((kind.segment, parts), kind)
        for kind in V1_KINDS.values():
            wanted = [ident for (segment, ident), k in named.items() if k is kind]
            found = [V1Definition(kind=kind, info={"Id": ident}) for ident in wanted]
            await self._each(f"{kind.label}s", found, self._read_definition)
            # One gone from the account (no Arn read) stays out; the plan reports the versions
            # that name it.
            account.definitions.update(
                ((kind.segment, d.info["Id"]), d) for d in found if "Arn" in d.info
            )
        account.calls = self.calls
        return account

    async def _group(self, group_id: str) -> dict[str, Any]:
        try:
            return await self._call("get_group", GroupId=group_id)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise V1ImportError(
                    f"--group-id {group_id}: the account has no such group; "
                    f"`aws greengrass list-groups` lists them"
                ) from None
            raise

    async def _read_group_versions(self, group: V1Group) -> None:
        listed = await self._all_pages("list_group_versions", "Versions", GroupId=group.info["Id"])
        group.versions = _oldest_first(
            await self._gather(
                [
                    self._call(
                        "get_group_version", GroupId=group.info["Id"], GroupVersionId=v["Version"]
                    )
                    for v in listed
                ]
            )
        )

    async def _read_definition(self, definition: V1Definition) -> None:
        """Fill in a definition and its versions; leaves `info` without Arn if it is gone."""
        kind, ident = definition.kind, definition.info["Id"]
        id_param = {kind.id_param(): ident}
        try:
            definition.info = await self._call(kind.method("get_{}_definition"), **id_param)
            listed = await self._all_pages(
                kind.method("list_{}_definition_versions"), "Versions", **id_param
            )
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return  # deleted in V1 while group versions still name it (AWS allows that)
            raise
        definition.versions = _oldest_first(
            await self._gather([self._version(kind, ident, v["Version"]) for v in listed])
        )

    async def _version(self, kind: V1Kind, ident: str, version_id: str) -> dict[str, Any]:
        params = {kind.id_param(): ident, f"{kind.api}DefinitionVersionId": version_id}
        method = kind.method("get_{}_definition_version")
        answer = await self._call(method, **params)
        token = answer.pop("NextToken", None) if kind.paged_get else None
        while token:
            # A long list comes in pages; the rest of each page's answer repeats the first's.
            page = await self._call(method, **params, NextToken=token)
            more = (page.get("Definition") or {}).get(kind.list_key) or []
            answer.setdefault("Definition", {}).setdefault(kind.list_key, []).extend(more)
            token = page.get("NextToken")
        answer.pop("NextToken", None)
        return answer

    async def _each(
        self,
        what: str,
        items: list[_T],
        read: Callable[[_T], Coroutine[Any, Any, None]],
    ) -> None:
        """Run `read` on every item, a few at a time, reporting progress as each ends."""
        done = 0
        total = len(items)

        async def one(item: _T) -> None:
            nonlocal done
            await read(item)
            done += 1
            self._progress(what, done, total)

        await self._gather([one(item) for item in items])

    @staticmethod
    async def _gather(calls: list[Coroutine[Any, Any, _T]]) -> list[_T]:
        """Await all; on the first failure cancel the rest (a TaskGroup's rule), raise it."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
        return [task.result() for task in tasks]


async def read_account(config: CloudConfig, group_ids: list[str], progress: Progress) -> V1Account:
    """Read the configured account's groups (all, or `group_ids`) through the V1 API.

    Raises:
        V1ImportError: No credentials, an unreachable endpoint, refused access, a --group-id
            that names no group, or another API failure; one line saying what to do.
    """
    region, endpoint = config.aws.region, config.aws.endpoint_url
    where = endpoint or f"greengrass.{region}.amazonaws.com"
    client_config = AioConfig(
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        connect_timeout=10,
        read_timeout=30,
        max_pool_connections=CONCURRENCY,
    )
    try:
        async with get_session().create_client(
            "greengrass", region_name=region, endpoint_url=endpoint, config=client_config
        ) as client:
            client.meta.events.register_first("needs-retry.greengrass", FirstContact())
            return await V1Reader(client, progress).read(group_ids)
    except Exception as exc:  # noqa: BLE001 - explained below, or raised as it is
        raise _explain(_first_leaf(exc), where, config) from None


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups: the one that stopped the rest."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _explain(exc: BaseException, where: str, config: CloudConfig) -> BaseException:  # noqa: PLR0911
    """The one-line error for a failure of the API or of reaching it; others unchanged."""
    if isinstance(exc, V1ImportError):
        return exc
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return V1ImportError(
            "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or another source of botocore's credential chain"
        )
    if isinstance(exc, NoRegionError):
        return V1ImportError(f"set [aws] region in {config.path}")
    if isinstance(exc, _UNREACHABLE):
        return V1ImportError(
            f"can't reach the Greengrass API at {where}: {exc}; check [aws] endpoint_url and "
            f"region in {config.path}, and the network"
        )
    if isinstance(exc, ClientError):
        return _client_error(exc, where)
    if isinstance(exc, BotoCoreError):
        return V1ImportError(f"the Greengrass API at {where} failed: {exc}")
    return exc


def _client_error(exc: ClientError, where: str) -> V1ImportError:
    code = _code(exc)
    operation = exc.operation_name
    message = exc.response.get("Error", {}).get("Message", "")
    if code in _DENIED:
        return V1ImportError(
            f"{where} refused {operation} ({code}); give these credentials read access to "
            f"Greengrass (greengrass:Get*, greengrass:List*, e.g. the AWS managed policy "
            f"AWSGreengrassReadOnlyAccess)"
        )
    return V1ImportError(f"{operation} at {where} failed: {code}: {message}")


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status)


def definition_id_of(arn: object) -> str | None:
    """The definition id in a definition version ARN (`…/definition/KIND/ID/versions/VID`)."""
    if not isinstance(arn, str):
        return None
    parts = arn.split("/")
    if len(parts) < 4 or parts[-2] != "versions":  # noqa: PLR2004 - …/ID/versions/VID
        return None
    return parts[-3]


def definition_named(account: V1Account, key: str, ref: object) -> V1Definition | None:
    """The definition read for group version key `key` naming version ARN `ref`, if any."""
    kind = V1_KINDS.get(key)
    ident = definition_id_of(ref)
    if kind is None or ident is None:
        return None
    return account.definitions.get((kind.segment, ident))


def _oldest_first(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Versions in creation order (AWS lists newest first; ties keep the listing's order)."""
    return sorted(versions, key=lambda v: str(v.get("CreationTimestamp", "")))
