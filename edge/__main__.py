# SPDX-License-Identifier: Apache-2.0
"""`python -m edge` runs the command line."""

import sys

from edge.cli import main

sys.exit(main())
