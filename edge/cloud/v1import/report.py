# SPDX-License-Identifier: Apache-2.0
"""The text `edge cloud import-greengrass` prints: each group, what edge can't run, the totals."""

from __future__ import annotations

from collections import Counter

from edge.cloud.v1import.plan import COPIED, PRESENT, SUMMARY_KINDS, GroupPlan
from edge.cloud.v1import.writer import ImportReport


def report_lines(report: ImportReport) -> list[str]:
    """The report, one group after the other, then the summary."""
    verb = "would copy" if report.dry_run else "copied"
    lines: list[str] = []
    for plan in report.groups:
        lines.append(f"{plan.label}: {_group_outcome(plan, verb)}")
        lines.extend(f"  conflict: {text}" for text in plan.conflicts)
        lines.extend(f"  edge can't run: {text}" for text in plan.notes)
    title = "summary (dry run, nothing written)" if report.dry_run else "summary"
    lines.append(f"{title}:")
    for what in SUMMARY_KINDS:
        copied, present = report.counts[what, COPIED], report.counts[what, PRESENT]
        if copied or present:
            lines.append(f"  {what}: {copied} {verb}, {present} {PRESENT}")
    conflicted = sum(1 for plan in report.groups if plan.conflicts)
    if conflicted:
        lines.append(
            f"  {conflicted} group(s) not written: an id is stored here with other content "
            f"(see each conflict above)"
        )
    if not sum(report.counts[what, COPIED] for what in SUMMARY_KINDS):
        lines.append("  nothing new")
    lines.append(f"  {report.calls} Greengrass API requests")
    return lines


def _group_outcome(plan: GroupPlan, verb: str) -> str:
    if plan.conflicts:
        return "not written (conflict)"
    copied = Counter({what: n for (what, state), n in plan.counts.items() if state == COPIED})
    if not copied:
        return "nothing new"
    parts = [f"{what} {copied[what]}" for what in SUMMARY_KINDS if copied[what]]
    return f"{verb}: " + ", ".join(parts)
