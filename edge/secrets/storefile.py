# SPDX-License-Identifier: Apache-2.0
"""Opening the core's secret store from its config: the state directory, the key, the file.

Apart from `edge.core`, so that `edge secrets list` and `edge status` (with no core running)
load the store, the key and their crypto, and nothing of the running core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.secrets.keys import CoreKey
from edge.secrets.store import STORE_FILE_NAME, SecretStore
from edge.statedir import check_state_dir

if TYPE_CHECKING:
    from edge.config import Config


def open_store(config: Config) -> SecretStore:
    """Check the state directory and key, and return the store (not yet loaded)."""
    check_state_dir(config.core.state_dir, config.path)
    key = CoreKey.load(config.core.private_key)
    return SecretStore(path=config.core.state_dir / STORE_FILE_NAME, key=key)
