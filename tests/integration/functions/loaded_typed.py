"""A handler that reads a secret through `edge.child.function`, then reports its modules."""

import sys

from edge.child.function import get_secret_value


def modules(event, context):
    """Read `SecretId`, then return the names of every module loaded in this worker."""
    get_secret_value(event["SecretId"])
    return sorted(sys.modules)
