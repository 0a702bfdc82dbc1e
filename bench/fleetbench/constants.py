# SPDX-License-Identifier: Apache-2.0
"""The fleet's fixed names: account, region, topic prefix, operator key, the function's code."""

from __future__ import annotations

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
#: The script the run starts again in another role (the latency proxy's process).
SCRIPT = BENCH_DIR / "fleet.py"
ACCOUNT = "123456789012"
REGION = "us-east-1"
PREFIX = "edge"
KEY_ID = "EDGEFLEETOPERATOR001"
#: Thing names of simulated cores: sim-0, sim-1, …
SIM_PREFIX = "sim-"
READER_FILE = BENCH_DIR / "functions" / "read_secrets.py"
READER_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:read-secrets:1"
