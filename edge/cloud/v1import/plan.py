# SPDX-License-Identifier: Apache-2.0
"""What importing one group would copy, what is already there, and what edge can't run. Pure.

The plan compares what the V1 API answered with what the control plane stores under the same
ids: an object stored with the same content is "already present", one missing is copied, and
one whose id is stored with other content is a conflict (never overwritten). Ids, version ids,
ARNs and timestamps are V1's own, so the comparison is exact.

A group version keeps the keys of the kinds edge stores (`GROUP_VERSION_KEYS`); the others
(devices, loggers) are left out and reported. Because the comparison is "the stored version's
keys are a subset, with equal values", an edge that stores more kinds later completes such a
version on the next run instead of calling it a conflict.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from edge.cloud.definitions import KINDS, Kind
from edge.cloud.groups import GROUP_VERSION_KEYS
from edge.cloud.v1import.reader import (
    V1_KINDS,
    V1Account,
    V1Definition,
    V1Group,
    definition_named,
)
from edge.model.connectors import builtin_connectors, parse_connector_arn
from edge.model.group import OTHER_CONTAINERS

COPIED: Final = "copied"
PRESENT: Final = "already present"
#: Kinds of object in the summary, in the order it lists them.
SUMMARY_KINDS: Final = (
    "groups",
    "group versions",
    *(f"{k.label}s" for k in KINDS.values()),
    *(f"{k.label} versions" for k in KINDS.values()),
)


@dataclass(frozen=True, slots=True)
class Stored:
    """What the control plane holds under the ids a group's import touches."""

    #: definition id -> (kind segment, ARN)
    definitions: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: definition version id -> (definition id, ARN, body)
    definition_versions: dict[str, tuple[str, str, Any]] = field(default_factory=dict)
    #: group id -> ARN
    groups: dict[str, str] = field(default_factory=dict)
    #: group version id -> (group id, ARN, body: the definition version ARNs)
    group_versions: dict[str, tuple[str, str, dict[str, str]]] = field(default_factory=dict)
    #: Function ARNs with code published with `edge cloud publish-function`.
    published: frozenset[str] = frozenset()


@dataclass(slots=True)
class DefinitionCopy:
    """A definition to copy: the row itself (unless stored) and the versions not yet stored."""

    kind: Kind
    info: dict[str, Any]
    new: bool
    versions: list[dict[str, Any]]


@dataclass(slots=True)
class GroupVersionCopy:
    """A group version to store (or, `complete`, whose stored keys to fill in)."""

    version: dict[str, Any]
    refs: dict[str, str]
    complete: bool = False


@dataclass(slots=True)
class GroupPlan:
    """Everything importing one group involves."""

    info: dict[str, Any]
    new_group: bool = False
    definitions: list[DefinitionCopy] = field(default_factory=list)
    versions: list[GroupVersionCopy] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: What edge can't run, or left out: shown under the group, never dropped silently.
    notes: list[str] = field(default_factory=list)
    #: Ids stored with other content; a group with any is not written at all.
    conflicts: list[str] = field(default_factory=list)
    #: (kind segment, id) of every definition the group's versions name.
    named: set[tuple[str, str]] = field(default_factory=set)

    @property
    def label(self) -> str:
        """`group ID ("Name")`, for the report."""
        name = self.info.get("Name")
        return f"group {self.info['Id']}" + (f' ("{name}")' if name else "")

    def note(self, text: str) -> None:
        """Add a note once (the same resource in three versions is one note)."""
        if text not in self.notes:
            self.notes.append(text)


def plan_group(
    account: V1Account, group: V1Group, stored: Stored, claimed: set[tuple[str, str]]
) -> GroupPlan:
    """Plan one group's import against what is stored.

    Args:
        account: What the V1 API answered.
        group: The group to plan, one of `account.groups`.
        stored: The control plane's rows under the ids involved (`writer.load_stored`).
        claimed: (kind segment, id) of definitions an earlier group of this run copies;
            they are neither copied nor counted again.
    """
    plan = GroupPlan(info=group.info)
    gid, arn = group.info["Id"], group.info["Arn"]
    if gid not in stored.groups:
        plan.new_group = True
        plan.counts["groups", COPIED] += 1
    elif stored.groups[gid] != arn:
        plan.conflicts.append(f"group {gid} is stored with ARN {stored.groups[gid]}, not {arn}")
    else:
        plan.counts["groups", PRESENT] += 1
    named: dict[tuple[str, str], V1Definition] = {}
    for version in group.versions:
        refs = _plan_group_version(plan, account, version, stored)
        for key, ref in refs.items():
            definition = definition_named(account, key, ref)
            if definition is not None:
                named.setdefault((definition.kind.segment, definition.info["Id"]), definition)
    plan.named = set(named)
    for ident, definition in named.items():
        if ident not in claimed:
            _plan_definition(plan, definition, stored)
        _note_contents(plan, definition, stored)
    return plan


def _plan_group_version(
    plan: GroupPlan, account: V1Account, version: dict[str, Any], stored: Stored
) -> dict[str, str]:
    """Plan one group version; return the references edge keeps."""
    vid, arn = version["Version"], version["Arn"]
    body: dict[str, str] = version.get("Definition") or {}
    refs = {key: ref for key, ref in body.items() if key in GROUP_VERSION_KEYS}
    for key, ref in body.items():
        if key not in GROUP_VERSION_KEYS:
            kind = V1_KINDS.get(key)
            what = kind.label if kind else key
            plan.note(
                f"version {vid}: left out {what} version {ref}: edge stores no {what}s "
                f"(the rest of the version is copied; a later import adds it once edge does)"
            )
    for key, ref in refs.items():
        kind = V1_KINDS[key]
        definition = definition_named(account, key, ref)
        if definition is None or all(v.get("Arn") != ref for v in definition.versions):
            plan.note(
                f"version {vid}: names {kind.label} version {ref}, which the account no "
                f"longer has; deploying this version fails until it is replaced"
            )
    if vid not in stored.group_versions:
        plan.versions.append(GroupVersionCopy(version=version, refs=refs))
        plan.counts["group versions", COPIED] += 1
        return refs
    owner, stored_arn, stored_refs = stored.group_versions[vid]
    if owner != plan.info["Id"] or stored_arn != arn:
        plan.conflicts.append(f"group version {vid} is stored as {stored_arn}, not {arn}")
    elif stored_refs == refs:
        plan.counts["group versions", PRESENT] += 1
    elif all(refs.get(key) == ref for key, ref in stored_refs.items()):
        plan.versions.append(GroupVersionCopy(version=version, refs=refs, complete=True))
        plan.counts["group versions", COPIED] += 1
    else:
        plan.conflicts.append(
            f"group version {vid} is stored with other definition versions than V1's"
        )
    return refs


def _plan_definition(plan: GroupPlan, definition: V1Definition, stored: Stored) -> None:
    kind = KINDS[definition.kind.api.lower()]
    did, arn = definition.info["Id"], definition.info["Arn"]
    label = kind.label
    known = stored.definitions.get(did)
    if known is None:
        plan.counts[f"{label}s", COPIED] += 1
    elif known != (kind.segment, arn):
        plan.conflicts.append(f"{label} {did} is stored as {known[1]}, not {arn}")
        return
    else:
        plan.counts[f"{label}s", PRESENT] += 1
    new_versions = []
    for version in definition.versions:
        vid, body = version["Version"], version.get("Definition") or {}
        held = stored.definition_versions.get(vid)
        if held is None:
            new_versions.append(version)
            plan.counts[f"{label} versions", COPIED] += 1
        elif held != (did, version["Arn"], body):
            plan.conflicts.append(f"{label} version {vid} is stored with other content")
        else:
            plan.counts[f"{label} versions", PRESENT] += 1
    if known is None or new_versions:
        plan.definitions.append(
            DefinitionCopy(
                kind=kind, info=definition.info, new=known is None, versions=new_versions
            )
        )


def _note_contents(plan: GroupPlan, definition: V1Definition, stored: Stored) -> None:
    """Note what of a definition's versions edge stores but can't run."""
    key = definition.kind.list_key
    for version in definition.versions:
        for item in (version.get("Definition") or {}).get(key) or []:
            if not isinstance(item, dict):
                continue
            if key == "Resources":
                _note_resource(plan, item)
            elif key == "Connectors":
                _note_connector(plan, item)
            elif key == "Functions":
                _note_function(plan, item, stored)


def _note_resource(plan: GroupPlan, item: dict[str, Any]) -> None:
    container = item.get("ResourceDataContainer")
    for data in container if isinstance(container, dict) else ():
        if data in OTHER_CONTAINERS:
            plan.note(
                f"resource {item.get('Id')!r} ({data}): copied, but edge gives functions only "
                f"secret resources; a function that needs it won't find it on the core"
            )


def _note_connector(plan: GroupPlan, item: dict[str, Any]) -> None:
    arn = str(item.get("ConnectorArn", ""))
    parsed = parse_connector_arn(arn)
    builtin = None if parsed is None else builtin_connectors().get(parsed.name)
    if parsed is not None and builtin is not None and parsed.version in builtin.manifest.versions:
        return
    shipped = ", ".join(sorted(builtin_connectors()))
    plan.note(
        f"connector {item.get('Id')!r} ({arn}): edge doesn't ship it (it ships {shipped}); "
        f"a version with it is copied but can't be deployed"
    )


def _note_function(plan: GroupPlan, item: dict[str, Any], stored: Stored) -> None:
    arn = item.get("FunctionArn")
    config = item.get("FunctionConfiguration")
    if not isinstance(arn, str) or arn in stored.published:
        return
    if isinstance(config, dict) and "Code" in config:
        return
    handler = config.get("Executable") if isinstance(config, dict) else None
    plan.note(
        f"function {arn} has no published code; create-deployment fetches it from AWS Lambda "
        f"if that version or alias is there, otherwise deploying fails until you run `edge "
        f"cloud publish-function --function-arn {arn} --zip-file fileb://PACKAGE.zip --handler "
        f"{handler if isinstance(handler, str) and handler else 'MODULE.FUNCTION'}`"
    )
