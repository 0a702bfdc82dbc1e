"""What the worker's seccomp filter costs: installing it, and each call it has to judge.

    .venv/bin/python bench/seccomp.py [--calls 200000] [--rounds 5]

Each round starts three fresh `python -S` children: a plain one (the baseline), one with a
one-instruction filter that allows everything (what having any filter costs a syscall's entry
into the kernel), and one with the worker's filter. The last one times importing the module
and `install_filter()` separately, and the resident memory both add. Each child times the
same loops of real syscalls: `os.chmod(path, 0o644)`, `os.fchmod(fd, 0o644)` and
`os.open`/`os.close` (the filter reads their mode argument), and `os.getpid()` (judged on its
number alone, so a 5.11+ kernel caches the verdict and skips the program). Figures are the
best round of each; ratios are against the plain child.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys, time
calls, mode, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def rss_kb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])

out = {}
if mode == "filtered":
    rss_kb()  # the first read of /proc allocates on its own
    before = rss_kb()
    start = time.perf_counter()
    from edge.child import seccomp
    imported = time.perf_counter()
    seccomp.install_filter()
    out["import_ms"] = (imported - start) * 1e3
    out["install_ms"] = (time.perf_counter() - imported) * 1e3
    out["rss_added_kb"] = rss_kb() - before
elif mode == "allow-all":
    from edge.child import seccomp
    table = {"x86_64": seccomp.X86_64, "aarch64": seccomp.AARCH64}[os.uname().machine]
    seccomp.load([(0x06, 0, 0, 0x7FFF0000)], table["seccomp"])  # ret ALLOW

def chmod():
    for _ in range(calls):
        os.chmod(path, 0o644)

def fchmod():
    fd = os.open(path, os.O_RDONLY)
    for _ in range(calls):
        os.fchmod(fd, 0o644)
    os.close(fd)

def open_close():
    for _ in range(calls):
        os.close(os.open(path, os.O_RDONLY))

def getpid():
    for _ in range(calls):
        os.getpid()

for name, loop in (("chmod", chmod), ("fchmod", fchmod), ("open+close", open_close),
                   ("getpid", getpid)):
    start = time.perf_counter_ns()
    loop()
    out[name] = (time.perf_counter_ns() - start) / calls
print(json.dumps(out))
"""

LOOPS = ("chmod", "fchmod", "open+close", "getpid")
#: The baseline, a one-instruction filter that allows everything (what any filter costs the
#: kernel's syscall entry), and the worker's filter.
MODES = ("plain", "allow-all", "filtered")


def run(mode: str, calls: int, path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, str(calls), mode, str(path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> int:
    """Run the rounds and print ns per call, plain and filtered, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200_000, help="syscalls per loop")
    parser.add_argument("--rounds", type=int, default=5, help="plain/filtered pairs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file"
        path.write_text("x")
        rounds = [{mode: run(mode, args.calls, path) for mode in MODES} for _ in range(args.rounds)]
    for key, what in (
        ("import_ms", "import edge.child.seccomp (ctypes included), ms"),
        ("install_ms", "install_filter(), ms"),
        ("rss_added_kb", "resident memory the two add, KB"),
    ):
        seen = sorted(r["filtered"][key] for r in rounds)
        print(f"{what}: median {seen[len(seen) // 2]:.2f}, best {seen[0]:.2f}")
    print(f"ns per call, best of {args.rounds} rounds; ratios against plain")
    print(f"{'call':<12} {'plain':>7} {'allow-all':>10} {'filtered':>9} {'ratio':>6} {'ratio':>6}")
    for loop in LOOPS:
        plain, allow_all, filtered = (min(r[mode][loop] for r in rounds) for mode in MODES)
        print(
            f"{loop:<12} {plain:>7.0f} {allow_all:>10.0f} {filtered:>9.0f}"
            f" {allow_all / plain:>6.2f} {filtered / plain:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
