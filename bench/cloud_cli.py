# SPDX-License-Identifier: Apache-2.0
"""`edge cloud` wall times: what a script pays per command, against a baseline checkout.

Each side (this checkout and, with `--baseline-from CHECKOUT`, another one) gets a SQLite
control plane of its own in a temporary directory (`edge cloud init`, untimed); then each
command is run `--repeat` times, interleaved (baseline, this, baseline, ...), as a new process
(`python -m edge ...` from the side's checkout, as a script calls it), and the median wall time
of each is printed:

* `edge --help`: the interpreter and `edge`'s own CLI, the floor under every command;
* `edge cloud --help`: the parser of every `edge cloud` command;
* `edge cloud list-groups`, `edge cloud create-group --name ...`: commands that use the
  database only (the broker and S3 named in the configuration are never asked).

Both checkouts are byte-compiled first (`python -m compileall -q edge`), as an install is:
with PYTHONDONTWRITEBYTECODE set, every run would otherwise compile every module it imports.
Both sides run on one interpreter and its site-packages; only `edge` comes from each checkout
(each command runs as `bench/footprint.py` runs the core's CLI: its `run_cli`).
The load average is printed before and after: the machine may be shared. Run:

    .venv/bin/python bench/cloud_cli.py [--baseline-from CHECKOUT] [--repeat 10]

A baseline checkout of the commit before a change: `git worktree add --detach /tmp/base REV`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from footprint import REPO, run_cli
from footprint import Side as Checkout

CONFIG = """\
[cloud]
database = "cloud.db"
signing_key = "keys/signing.pem"
[mqtt]
url = "mqtt://127.0.0.1:1"
[aws]
region = "us-east-1"
"""


@dataclass
class Side:
    """One checkout, its control plane's configuration, and its wall times in seconds."""

    checkout: Checkout
    config: Path
    times: dict[str, list[float]] = field(default_factory=dict)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-from", type=Path, help="another checkout of edge")
    parser.add_argument("--repeat", type=int, default=10, help="runs of each command; median")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of both sides")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


def commands(side: Side, run: int) -> dict[str, tuple[str, ...]]:
    """The timed commands of one round, by the name the table gives them."""
    cloud = ("cloud", "--config", str(side.config))
    return {
        "edge --help": ("--help",),
        "edge cloud --help": ("cloud", "--help"),
        "edge cloud list-groups": (*cloud, "list-groups"),
        "edge cloud create-group": (*cloud, "create-group", "--name", f"g{run}"),
    }


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def prepare(args: argparse.Namespace, workdir: Path) -> list[Side]:
    """Byte-compile each checkout and give it a control plane (`edge cloud init`)."""
    sources = [("this", REPO)]
    if args.baseline_from is not None:
        if not (args.baseline_from / "edge" / "cloud" / "cli.py").exists():
            raise SystemExit(f"{args.baseline_from} is not a checkout of edge")
        sources.insert(0, ("baseline", args.baseline_from.resolve()))
    sides = []
    for name, source in sources:
        subprocess.run([args.python, "-m", "compileall", "-q", "edge"], cwd=source, check=True)
        (workdir / name).mkdir()
        side = Side(Checkout(name, source, args.python), workdir / name / "cloud.toml")
        side.config.write_text(CONFIG)
        run_cli(side.checkout, "cloud", "--config", str(side.config), "init")
        sides.append(side)
    return sides


def measure(sides: list[Side], args: argparse.Namespace) -> None:
    """Run each command `--repeat` times, the sides interleaved."""
    for run in range(args.repeat):
        for side in sides:
            for key, call in commands(side, run).items():
                elapsed, out = run_cli(side.checkout, *call)
                side.times.setdefault(key, []).append(elapsed)
                if key.endswith("list-groups") and len(json.loads(out)["Groups"]) != run:
                    raise RuntimeError(f"{side.checkout.name}: list-groups lost a group: {out}")


def report(sides: list[Side], args: argparse.Namespace) -> None:
    """Print the medians as markdown, each side a column, the ratio to the baseline last."""
    ratio = len(sides) > 1
    print(f"Wall times in ms, medians of {args.repeat}, interleaved:\n")
    names = " | ".join(side.checkout.name for side in sides)
    print(f"| command | {names} |" + (" ratio |" if ratio else ""))
    print("|" + " --- |" * (len(sides) + 1 + ratio))
    for key in sides[0].times:
        medians = [statistics.median(side.times[key]) for side in sides]
        row = f"| `{key}` | " + " | ".join(f"{m * 1000:.0f}" for m in medians) + " |"
        if ratio:
            row += f" {medians[-1] / medians[0]:.2f} |"
        print(row)


def main() -> None:
    """Prepare each side, time the commands, print the table and the load average."""
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edge-cloud-cli-"))
    try:
        sides = prepare(args, workdir)
        print(f"load average before: {load_average()}", flush=True)
        measure(sides, args)
        print(f"load average after: {load_average()}\n")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(sides, args)


if __name__ == "__main__":
    main()
