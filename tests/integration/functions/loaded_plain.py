"""A V1 handler that imports nothing: it reports the modules its worker holds, the runtime's."""

import sys


def modules(event, context):
    """The names of every module loaded in this worker."""
    return sorted(sys.modules)
