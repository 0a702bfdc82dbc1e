# SPDX-License-Identifier: Apache-2.0
"""What every process of the IPC benchmark shares: the secret, the worker's names, the paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
#: The script every server and client process runs, in the role its first argument names.
SCRIPT = BENCH_DIR / "ipc.py"
SECRET_NAME = "bench/db-password"
#: What Secrets Manager's GetSecretValue answers for a 40-character string secret.
ANSWER: dict[str, Any] = {
    "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:bench/db-password-AbCdEf",
    "Name": SECRET_NAME,
    "VersionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
    "SecretString": "correct-horse-battery-staple-0123456789ab",
    "VersionStages": ["AWSCURRENT"],
    "CreatedDate": 1764331200.123,
}
WARMUP_CALLS = 500
SDK_ACCOUNT = "123456789012"
#: The secrets manager system function's ARN, as the core gives workers.
SECRETS_MANAGER_ARN = "arn:aws:lambda:::function:GGSecretManager:1"
