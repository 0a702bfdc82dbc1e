# SPDX-License-Identifier: Apache-2.0
"""What the IPC benchmark prints: the table of modes, the verdict on each target, the breakdown."""

from __future__ import annotations

import argparse
import json
import os
import platform

from bench.ipcbench.measure import Mode, Run

THROUGHPUT_RATIO_TARGET = 5.0
SDK_THROUGHPUT_RATIO_TARGET = 10.0
#: A first read (a round trip through the SDK) may take this much longer than a bare one.
FIRST_READ_OVER_BARE = 1.10
P99_TARGET_US = 100.0
SERVER_CPU_TARGET_US = 15.0
TITLES = {
    "ipc": "native first reads: edge.child.function, cache missed, one round trip",
    "http": "**baseline**: aiohttp + http.client",
    "sdk": "**greengrasssdk, repeated reads** (worker cache)",
    "sdk-first": "greengrasssdk, first reads (cache off: every read to the core)",
    "bare": "reference: bare msgpack over a Unix socket",
}
#: The issue's reference machine: a bare round trip cost ~8 µs of server CPU where the core's
#: target was 15 µs. Machines differ by 3x and more (CPU speed, the hypervisor's wake-ups), so
#: the core's CPU is also judged against the bare round trip measured in the same run.
BARE_SERVER_CPU_REFERENCE_US = 8.0


def report(args: argparse.Namespace, modes: list[Mode], loops: dict[str, str]) -> None:
    """Print the markdown table and the verdict on each target."""
    pinning = "one client pinned to the server's CPU" if args.pin else "not pinned"
    core_loop = f"; core (edge run) loop: {loops['sdk']}" if "sdk" in loops else ""
    print(
        f"\n{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.seconds:g} s per mode, {args.repeat} run(s), "
        f"median run by throughput shown; {pinning}.\n"
        f"ipc server loop: {loops['ipc']}; http server loop: {loops['http']}{core_loop}\n"
    )
    print(
        "| mode | clients | req/s | p50 µs | p99 µs | server CPU µs/req "
        "| client CPU µs/req | vs baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    baseline = {m.clients: m.median for m in modes if m.kind == "http"}
    bare = {m.clients: m.median for m in modes if m.kind == "bare"}
    verdicts: list[str] = []
    for mode in modes:
        run = mode.median
        ratio = run.requests_per_second / baseline[mode.clients].requests_per_second
        print(
            f"| {TITLES[mode.kind]} | {mode.clients} | {run.requests_per_second:,.0f} "
            f"| {run.p50_us:.1f} | {run.p99_us:.1f} | {run.server_cpu_us:.1f} "
            f"| {run.client_cpu_us:.1f} | {ratio:.2f}x |"
        )
        if mode.kind == "sdk":
            verdicts.append(
                f"repeated reads through greengrasssdk >= {SDK_THROUGHPUT_RATIO_TARGET:g}x "
                f"baseline at {mode.clients} client(s): {ratio:.2f}x -> "
                f"{'met' if ratio >= SDK_THROUGHPUT_RATIO_TARGET else 'NOT met'}"
            )
            if mode.clients == 1:
                verdicts.append(
                    f"repeated reads p99 <= {P99_TARGET_US:g} µs with 1 client: "
                    f"{run.p99_us:.1f} -> {'met' if run.p99_us <= P99_TARGET_US else 'NOT met'}"
                )
        if mode.kind in {"sdk-first", "ipc"} and mode.clients in bare:
            verdicts.append(first_read_verdict(mode, bare[mode.clients]))
        if mode.kind != "ipc":
            continue
        verdicts.append(
            f"throughput >= {THROUGHPUT_RATIO_TARGET:g}x baseline at {mode.clients} client(s): "
            f"{ratio:.2f}x -> {'met' if ratio >= THROUGHPUT_RATIO_TARGET else 'NOT met'}"
        )
        verdicts.append(
            f"core CPU <= {SERVER_CPU_TARGET_US:g} µs/request at {mode.clients} client(s): "
            f"{run.server_cpu_us:.1f} -> "
            f"{'met' if run.server_cpu_us <= SERVER_CPU_TARGET_US else 'NOT met'}"
        )
        if mode.clients in bare:
            relative = run.server_cpu_us / bare[mode.clients].server_cpu_us
            allowed = SERVER_CPU_TARGET_US / BARE_SERVER_CPU_REFERENCE_US
            verdicts.append(
                f"core CPU relative to the bare round trip in this run at {mode.clients} "
                f"client(s): {relative:.2f}x (the target on the issue's reference machine: "
                f"{allowed:.2f}x) -> {'met' if relative <= allowed else 'NOT met'}"
            )
        if mode.clients == 1:
            verdicts.append(
                f"p99 <= {P99_TARGET_US:g} µs with 1 client: {run.p99_us:.1f} -> "
                f"{'met' if run.p99_us <= P99_TARGET_US else 'NOT met'}"
            )
    print()
    for line in verdicts:
        print(f"- {line}")
    if "breakdown" in loops:
        report_breakdown(
            "layer of a cached read through greengrasssdk", json.loads(loops["breakdown"])
        )
        report_breakdown(
            "a first read (a round trip to the bench's IPC server), through each layer"
            + (", pinned" if args.pin else ""),
            json.loads(loops["first-read-breakdown"]),
        )


def first_read_verdict(mode: Mode, bare: Run) -> str:
    """First reads against the bare round trip (p50).

    The target is for the native path; the greengrasssdk path also carries the SDK's own code
    and V1's JSON, cache or none.
    """
    over = mode.median.p50_us / bare.p50_us
    what = (
        "first reads through greengrasssdk (SDK code and V1 JSON included)"
        if mode.kind == "sdk-first"
        else "first reads through edge.child.function"
    )
    return (
        f"{what} within {FIRST_READ_OVER_BARE - 1:.0%} of the bare round trip (p50) at "
        f"{mode.clients} client(s): {over:.2f}x -> "
        f"{'met' if over <= FIRST_READ_OVER_BARE else 'NOT met'}"
    )


def report_breakdown(title: str, layers: dict[str, float]) -> None:
    """Print where a read's microseconds go, layer by layer."""
    print(f"\n| {title} | µs per call (median batch) |")
    print("|---|---:|")
    for name, micros in layers.items():
        print(f"| {name} | {micros:.2f} |")
