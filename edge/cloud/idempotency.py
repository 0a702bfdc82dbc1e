# SPDX-License-Identifier: Apache-2.0
"""Client tokens (`X-Amzn-Client-Token`): a repeated request gets the first one's answer.

Every Greengrass V1 operation that creates something takes an `AmznClientToken`, so that a
client unsure whether its request was applied (a timeout, a dropped connection) can send it
again. The token is recorded with a digest of the input in the same transaction as the change
(through the request's `Claim`), and the answer once it is known. The same token with the
same input then gets that answer, and changes nothing; with other input it gets AWS's
`IdempotentParameterMismatch`, as a `BadRequestException` (the model's error for a request
breaking a rule). The rows are in the shared database, so replicas answer alike.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from edge.cloud.db import Database
from edge.cloud.errors import ClientTokenInUseError, ClientTokenMismatchError

TOKEN_MEMBER: Final = "AmznClientToken"  # noqa: S105 - a member name, not a secret

#: (operation, token, digest of the input without the token)
TokenKey = tuple[str, str, str]


def token_key(operation: str, params: dict[str, Any]) -> TokenKey | None:
    """The request's client token and input digest, or None if it carries no token."""
    token = params.get(TOKEN_MEMBER)
    if not isinstance(token, str):
        return None
    return key_of(operation, token, {k: v for k, v in params.items() if k != TOKEN_MEMBER})


def key_of(operation: str, token: str, params: dict[str, Any]) -> TokenKey:
    """The key of a token given with `params` (the input, without the token)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return operation, token, hashlib.sha256(text.encode("utf-8")).hexdigest()


def earlier_answer(db: Database, key: TokenKey) -> dict[str, Any] | None:
    """The first answer given under this token (None: the token is new).

    Raises:
        ClientTokenMismatchError: The token came with other input before.
        ClientTokenInUseError: The first request with it has not answered yet.
    """
    operation, token, digest = key
    with db.read() as conn:
        row = conn.execute(
            "SELECT input_sha256, answer FROM client_tokens WHERE operation = :operation AND"
            " token = :token",
            {"operation": operation, "token": token},
        ).fetchone()
    if row is None:
        return None
    if row["input_sha256"] != digest:
        raise ClientTokenMismatchError(token, operation)
    if row["answer"] is None:
        raise ClientTokenInUseError(token)
    answer: dict[str, Any] = json.loads(row["answer"])
    return answer


def store_answer(db: Database, key: TokenKey, answer: dict[str, Any]) -> None:
    """Keep the answer of the request that recorded this token."""
    operation, token, _ = key
    with db.write() as conn:
        conn.execute(
            "UPDATE client_tokens SET answer = :answer WHERE operation = :operation AND token ="
            " :token",
            {"answer": json.dumps(answer), "operation": operation, "token": token},
        )
