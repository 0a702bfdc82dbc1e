"""Helpers of the tests alone; what the demo and the benches share with them is `edge.fixtures`."""

from pathlib import Path

#: The checkout's root: the example configs, docs and functions the tests read.
REPO = Path(__file__).resolve().parents[2]
