# SPDX-License-Identifier: Apache-2.0
"""A fetch process that never answers (`python -m tests.support.hanging_fetcher`): a hung fetch.

It writes its pid to stderr first, so that a test can see it was killed.
"""

import os
import sys
import time

print(f"hanging-fetcher-pid={os.getpid()}", file=sys.stderr, flush=True)
time.sleep(120)
