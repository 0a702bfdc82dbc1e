# SPDX-License-Identifier: Apache-2.0
"""What the fleet run prints: each round's line, the summary table, the CPU profile by part."""

from __future__ import annotations

import collections
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.fleetbench.world import Fleet


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def mb(kb: float) -> str:
    """Return kB as MB text."""
    return f"{kb / 1024:.1f}"


def spread(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    """Return 'p50 / p90 / max' of values, as text."""
    p50, p90, top = (
        v * scale for v in (percentile(values, 0.5), percentile(values, 0.9), max(values))
    )
    return f"{p50:.{digits}f} / {p90:.{digits}f} / {top:.{digits}f} {unit}"


def per(count: float, n: int) -> str:
    """Return a count and its share per core, as text."""
    return f"{count:g} ({count / n:.2f} per core)"


Rows = list[tuple[str, str]]


def timing_rows(fleet: Fleet, result: dict[str, Any], extra: dict[str, Any]) -> Rows:
    """Set-up, publishing and time-to-Success rows."""
    n = len(fleet.things)
    finals = dict(fleet.counter.finals)
    by_thing = {thing: i for i, thing in enumerate(fleet.things)}
    per_core = [when - result["sent"][by_thing[t]] for t, (when, _, _) in finals.items()]
    api = [a - s for a, s in zip(result["answered"], result["sent"], strict=True)]
    outcome = collections.Counter(status for _, status, _ in finals.values())
    repeated = sum(1 for count in fleet.counter.final_count.values() if count > 1)
    rows: Rows = [
        ("control plane: a core definition + a group per core", f"{extra['setup']:.1f} s"),
        (
            f"cores started, {fleet.args.batch} at a time, all connected",
            f"{extra['startup']:.1f} s",
        ),
        ("idle CPU per core before deploying", f"{extra['idle_cpu'] * 1000:.1f} ms/s"),
        (
            "bulk deployment Completed (all published)"
            if fleet.args.bulk
            else "all CreateDeployment answered (all published)",
            f"{result['published']:.2f} s",
        ),
        (
            "StartBulkDeployment latency"
            if fleet.args.bulk
            else "CreateDeployment latency p50 / p90 / max",
            spread(api, "ms", 1000, digits=0),
        ),
        (
            "**time to all-Success** (first CreateDeployment -> last Success)",
            f"**{result['all_final']:.2f} s**",
        ),
        (
            "last Success after the last CreateDeployment answer",
            f"{result['final_after_answered']:.2f} s",
        ),
        (
            "outbox publish rate (deployments through the broker, first to last)",
            f"{result['publish_rate']:.0f} /s",
        ),
        (
            "status-ingest lag (core's UpdatedAt -> recorded), p50 / p90 / max",
            spread(result["ingest_lag"], "s") if result["ingest_lag"] else "none recorded",
        ),
    ]
    if per_core:
        rows.append(
            ("per core: its CreateDeployment -> its Success, p50 / p90 / max", spread(per_core))
        )
    summary = ", ".join(f"{k} {v}" for k, v in sorted(outcome.items()))
    rows += [
        ("final statuses seen on the broker", f"{summary or 'none'} (of {n})"),
        ("cores that reported a final status more than once", str(repeated)),
        (
            "control plane DB holds every final status, after the last one arrived",
            f"{result['recorded_lag']:.2f} s",
        ),
        (
            "GetDeploymentStatus of every deployment (API)",
            ", ".join(f"{k} {v}" for k, v in sorted(extra["api"].items())),
        ),
    ]
    return rows


def kill_rows(fleet: Fleet, result: dict[str, Any]) -> Rows:
    """The replica SIGKILLed mid-bulk: when, how far it had got, the takeover, the damage.

    Called with the counter's lock held, as every row function is.
    """
    kill, n = result["kill"], len(fleet.things)
    if "killed_at" not in kill:
        return [("replica SIGKILL", "**not done** (the run ended first)")]
    left = kill["lease_left"]
    rows: Rows = [
        (
            (
                f"SIGKILL of replica {kill['victim']} (the one holding the bulk's lease:"
                f" {'yes' if kill['held_lease'] else 'NO'}), after StartBulkDeployment"
            ),
            f"{kill['killed_at']:.2f} s; bulk {kill['state_at_kill']}, lease"
            + (" not taken" if left is None else f" {left:.1f} s from expiry"),
        ),
        (
            "then: deployments created / delivered by the broker / final statuses seen",
            (
                f"{kill['created_at_kill']} / {kill['delivered_at_kill']}"
                f" / {kill['finals_at_kill']}"
                f" of {n}; {kill['unsent_at_kill']} outbox rows unsent"
            ),
        ),
    ]
    if "resumed_at" in kill:
        rows.append(
            (
                "**survivor took the lease over** (after StartBulkDeployment; after the kill)",
                (
                    f"**{kill['resumed_at']:.2f} s;"
                    f" {kill['resumed_at'] - kill['killed_at']:.2f} s**;"
                    f" {kill['created_at_resume']} deployments created by then"
                ),
            )
        )
    else:
        ended = kill.get("ended_without_takeover", "not seen before the deadline")
        rows.append(("survivor took the lease over", f"no: bulk {ended}"))
    rows += [(f"**{name}** (database)", f"**{count}**") for name, count in kill["census"].items()]
    # The caller holds the counter's lock.
    delivered = fleet.counter.delivered
    final_count = fleet.counter.final_count
    missing = n - len(fleet.counter.finals)
    lost = [t for t in kill["unfinished_things"] if t in fleet.counter.finals]
    rows.append(
        (
            "of those, the core's final status is on the broker (lost by the control plane)",
            f"{len(lost)}: {', '.join(sorted(lost)[:6])}{' ...' if len(lost) > 6 else ''}",
        )
    )
    again = [t for t, ids in delivered.items() if len(ids) > len(set(ids))]
    other = [t for t, ids in delivered.items() if len(set(ids)) > 1]
    answered = sum(1 for t in again if final_count.get(t, 0) > 1)
    duplicates = sum(
        c.log.read_bytes().count(b'"deploy.duplicate"') for c in fleet.cores if c.log.exists()
    )
    rows += [
        ("**cores that never got a final status** (broker)", f"**{missing}**"),
        ("**cores sent two different deployments** (broker)", f"**{len(other)}**"),
        (
            "cores sent the same deployment again (redelivered; broker)",
            (
                f"{len(again)}, of which {answered} published their final status again"
                f" (real cores' `deploy.duplicate` log lines: {duplicates})"
            ),
        ),
        (
            "**CPU: surviving replica, per deployment**",
            (
                f"**{kill['survivor_cpu'] * 1000 / n:.2f} ms** ({kill['survivor_cpu']:.1f} s); the"
                f" killed one {kill['victim_cpu']:.1f} s until the kill"
            ),
        ),
    ]
    return rows


def message_rows(fleet: Fleet, extra: dict[str, Any]) -> Rows:
    """Broker message rows: the counter's, then Mosquitto's $SYS deltas."""
    n, counter = len(fleet.things), fleet.counter
    rows: Rows = [
        (
            f"MQTT PUBLISH: {kind} (counter on `#`)",
            f"{per(counter.kinds[kind], n)}, {counter.sizes[kind] / 1024:.0f} KiB",
        )
        for kind in ("deployments", "statuses", "other")
    ]
    before, after = extra["sys_before"], extra["sys_after"]
    for key, note in SYS_COUNTERS.items():
        if key in after:
            rows.append((f"$SYS/broker/{key}{note}", per(after[key] - before.get(key, 0), n)))
    return rows


#: Mosquitto's $SYS counters shown, with what they leave out or add.
SYS_COUNTERS = {
    "publish/messages/received": " (2.0.11: not retained ones)",
    "publish/messages/sent": " (incl. to counter, follower, $SYS)",
    "messages/received": " (every packet type)",
    "messages/sent": " (every packet type)",
}


def call_rows(fleet: Fleet, extra: dict[str, Any]) -> Rows:
    """Secrets Manager (and S3) calls, from the proxy's counters."""
    n, counts = len(fleet.things), extra["proxy"]
    sm = {op: calls for op, calls in counts.items() if not op.startswith("/")}
    s3 = sum(calls for op, calls in counts.items() if op.startswith("/"))
    rows: Rows = [(f"Secrets Manager {op}", per(calls, n)) for op, calls in sorted(sm.items())]
    rows.append(("Secrets Manager calls, all operations", per(sum(sm.values()), n)))
    rows.append(("S3 GetObject (function code, not Secrets Manager)", per(s3, n)))
    return rows


def cpu_rows(fleet: Fleet, result: dict[str, Any]) -> Rows:
    """Who used the CPUs from the first CreateDeployment to the last final status."""
    n, cpu, window = len(fleet.things), result["cpu"], result["window"]
    real = max(1, len(fleet.cores))
    # NaN: not measured (PostgreSQL's backends after a replica SIGKILL).
    ours = sum(v for k, v in cpu.items() if k != "machine" and v == v)  # noqa: PLR0124
    capacity = window * (os.cpu_count() or 1)
    rows: Rows = [
        (
            f"CPU used in those {window:.1f} s (of {capacity:.0f} CPU-s)",
            f"{cpu['machine']:.1f} CPU-s, of which not this run's {cpu['machine'] - ours:.1f}",
        ),
        ("CPU: real cores, per core", f"{cpu['cores']:.1f} s, {cpu['cores'] / real * 1000:.0f} ms"),
        (
            "**CPU: control plane (`serve`), per deployment**, status following included",
            f"**{cpu['control plane'] * 1000 / n:.2f} ms**",
        ),
    ]
    parts = (
        "simulated cores",
        "postgresql",
        "moto",
        "latency proxy",
        "mosquitto",
        "benchmark (boto3, counter)",
    )
    rows += [(f"CPU: {k}", f"{cpu[k]:.1f} s") for k in parts]
    rows.append(
        (
            "CPU: PostgreSQL backends of the run's database, per deployment",
            f"{cpu['postgresql'] * 1000 / n:.2f} ms",
        )
    )
    return rows


def memory_rows(extra: dict[str, Any]) -> Rows:
    """Per-core memory rows, idle and after Success."""
    rows: Rows = []
    for label, (rss, pss) in (("idle", extra["mem_idle"]), ("after Success", extra["mem_after"])):
        if rss:
            rows.append(
                (
                    f"core VmRSS {label}: median / max",
                    f"{mb(statistics.median(rss))} / {mb(max(rss))} MB",
                )
            )
            rows.append((f"core PSS {label}: median", f"{mb(statistics.median(pss))} MB"))
    rows.append(("processes the cores started (workers)", str(extra["children"])))
    return rows


def report(fleet: Fleet, result: dict[str, Any], extra: dict[str, Any]) -> None:
    """Print the summary table and whatever went wrong."""
    args, n = fleet.args, len(fleet.things)
    print()
    print(
        f"fleet: {len(fleet.cores)} cores (`edge run`) and {len(fleet.sim_things)} simulated "
        f"({args.sim_processes} processes), one Mosquitto, one moto behind latency_proxy "
        f"({args.delay_ms:g} ms per call); {os.cpu_count()} CPUs"
    )
    print(
        f"group: {args.secrets} secrets x (AWSCURRENT + {args.labels} more label(s)), one "
        f"on-demand function granted all; one group per core (the same resource and function "
        f"definition versions, a core definition each); "
        + (
            "one StartBulkDeployment of every group"
            if args.bulk
            else f"{n} CreateDeployment calls (boto3, {args.concurrency} at a time)"
        )
        + f" through `edge cloud serve` on {'PostgreSQL' if args.postgresql else 'SQLite'}"
    )
    for note in fleet.notes:
        print(f"note: {note}")
    with fleet.counter.lock:
        rows = [
            *timing_rows(fleet, result, extra),
            *(kill_rows(fleet, result) if result.get("kill") else []),
            *message_rows(fleet, extra),
            *call_rows(fleet, extra),
            *cpu_rows(fleet, result),
            *memory_rows(extra),
        ]
        others = dict(fleet.counter.other_topics)
        finals = dict(fleet.counter.finals)
    width = max(len(k) for k, _ in rows)
    print()
    print(f"| {'what'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|---|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    if others:
        print(f"other topics: {others}")
    for thing, (_, status, error) in sorted(finals.items()):
        if status != "Success":
            print(f"failure: {thing}: {error}")
    missing = sorted(set(fleet.things) - set(finals))
    if missing:
        print(f"no final status from {len(missing)} cores: {missing[:10]}")


def print_profile(directories: list[Path], cpu: float, deployments: int) -> None:
    """The replicas' CPU over every round, split by part (bench/profile_serve.py)."""
    from bench.profile_serve import split, top  # noqa: PLC0415

    parts: dict[str, dict[str, float]] = {}
    for directory in directories:
        deadline = time.monotonic() + 10
        while not (directory / "split.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for part, threads in split(directory).items():
            for thread, seconds in threads.items():
                parts.setdefault(part, {}).setdefault(thread, 0.0)
                parts[part][thread] += seconds
    measured = sum(sum(threads.values()) for threads in parts.values())
    print(
        f"\nCPU of `serve` by part ({', '.join(map(str, directories))}): {measured:.2f} s in"
        f" callbacks and database calls, of {cpu:.2f} s from /proc; per deployment"
        f" ({deployments}):"
    )
    for part, threads in sorted(parts.items(), key=lambda item: -sum(item[1].values())):
        seconds = sum(threads.values())
        where = ", ".join(f"{t} {s * 1000 / deployments:.2f}" for t, s in sorted(threads.items()))
        print(
            f"  {part}: {seconds * 1000 / deployments:.2f} ms ({seconds / max(cpu, 1e-9):.0%};"
            f" {where})"
        )
    for directory in directories:
        print(top(directory, 30))


def round_line(result: dict[str, Any], total: int) -> str:
    """One round's key figures, as text."""
    cpu = result["cpu"]["control plane"]
    lag = result["ingest_lag"] or [0.0]
    return (
        f"answered {result['published']:.2f} s, all-Success {result['all_final']:.2f} s, "
        f"control plane {cpu * 1000 / total:.2f} ms CPU per deployment"
        f" (PostgreSQL {result['cpu']['postgresql'] * 1000 / total:.2f} ms), "
        f"publish {result['publish_rate']:.0f}/s, ingest lag p50 {percentile(lag, 0.5):.2f} s"
        f" p90 {percentile(lag, 0.9):.2f} s"
    )
