# SPDX-License-Identifier: Apache-2.0
"""Strict JSON for the control plane's inputs: the `edge cloud` arguments and API request bodies.

Both reach the core's parser in the end, which refuses what `json.loads` lets through (a key
repeated in one object, NaN, Infinity); refusing it at the door names the mistake where it was
made.
"""

from __future__ import annotations

import json
from typing import Any

from edge.cloud.errors import CloudUsageError


def strict_json(option: str, text: str) -> Any:  # noqa: ANN401 - any JSON value
    """Parse JSON text as the core will: a key repeated in one object, NaN or Infinity is an error.

    Args:
        option: Names the text in messages (`--initial-version`, `request body`).
        text: The JSON text.

    Raises:
        CloudUsageError: The text is not JSON, or breaks one of the rules above.
    """

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            keys = [key for key, _ in pairs]
            repeated = next(key for key in keys if keys.count(key) > 1)
            raise CloudUsageError(option, f"key {repeated!r} appears twice in one object")
        return result

    def refuse(name: str) -> None:
        raise CloudUsageError(option, f"{name} is not a JSON value")

    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=refuse)
    except RecursionError:
        raise CloudUsageError(option, "is nested too deeply") from None
    except ValueError as exc:
        raise CloudUsageError(option, f"is not valid JSON: {exc}") from None
