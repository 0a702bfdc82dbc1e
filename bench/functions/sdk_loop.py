# SPDX-License-Identifier: Apache-2.0
"""A Greengrass V1 Lambda handler that times `greengrasssdk`'s get_secret_value in a loop.

`bench/ipc.py --sdk` zips this file with the unmodified `greengrasssdk` from site-packages,
deploys it to a real `edge run` core and starts it with `edge invoke`. Plain V1 code: nothing
here knows about the core beyond the SDK.

Event (JSON):
  SecretId  name of the secret to read (the answer's Name must match it)
  seconds   how long to call for, from start_at
  start_at  wall-clock time (time.time()) at which every concurrently invoked copy starts
  warmup    calls made before waiting for start_at (default 500)
  cpus      optional CPU list for this worker process (sched_setaffinity)
  core_pid  optional pid whose /proc CPU ticks are read at the start and end of the window

It answers count, p50/p99 of its own calls (ns), a latency histogram (so the conductor can merge
several copies exactly to `hist_ns`), this process's CPU time over the window, and the core's
CPU ticks before and after.
"""

import array
import os
import time

import greengrasssdk

secrets_client = greengrasssdk.client("secretsmanager")

HIST_NS = 100
MAX_BUCKETS = 40000


def _cpu_ticks(pid):
    """CPU time (utime + stime, all threads) of a process in clock ticks; None if unreadable."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:  # noqa: PTH123 - V1 code, plain Python
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def _histogram(latencies):
    """{bucket: count} at HIST_NS resolution, coarsened tenfold until it is small enough."""
    width = HIST_NS
    while True:
        buckets = {}
        for value in latencies:
            key = value // width
            buckets[key] = buckets.get(key, 0) + 1
        if len(buckets) <= MAX_BUCKETS:
            return width, {str(k): n for k, n in buckets.items()}
        width *= 10


def function_handler(event, context):  # noqa: ARG001 - V1's handler signature
    """Call get_secret_value for `seconds` from `start_at`; answer what was measured."""
    secret_id = event["SecretId"]
    if event.get("cpus"):
        os.sched_setaffinity(0, event["cpus"])
    get_secret_value = secrets_client.get_secret_value
    for _ in range(int(event.get("warmup", 500))):
        if get_secret_value(SecretId=secret_id)["Name"] != secret_id:
            raise RuntimeError("wrong answer")

    core_pid = event.get("core_pid")
    start_at = float(event.get("start_at", 0))
    late_s = time.time() - start_at
    if late_s < 0:
        time.sleep(-late_s)
    latencies = array.array("q")
    append = latencies.append
    clock = time.perf_counter_ns
    core_before = _cpu_ticks(core_pid)
    cpu_before = time.process_time()
    now = begin = clock()
    end = now + int((start_at + float(event["seconds"]) - time.time()) * 1e9)
    while now < end:
        if get_secret_value(SecretId=secret_id)["Name"] != secret_id:
            raise RuntimeError("wrong answer")
        after = clock()
        append(after - now)
        now = after
    cpu = time.process_time() - cpu_before
    core_after = _cpu_ticks(core_pid)

    count = len(latencies)
    ordered = sorted(latencies)
    width, hist = _histogram(ordered)
    return {
        "count": count,
        "p50_ns": ordered[count // 2] if count else None,
        "p99_ns": ordered[min(count - 1, int(count * 0.99))] if count else None,
        "window_ns": now - begin,
        "late_ms": max(0.0, late_s * 1000),
        "cpu_seconds": cpu,
        "core_ticks": [core_before, core_after],
        "clock_ticks_per_second": os.sysconf("SC_CLK_TCK"),
        "hist_ns": width,
        "hist": hist,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cached": _cached(),
    }


def _cached():
    """Whether the core's client cached answers in this worker (None: not an edge core)."""
    try:
        from edge.child.function import answers_cached  # noqa: PLC0415
    except ImportError:
        return None
    return answers_cached()
