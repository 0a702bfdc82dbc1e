"""A V1 handler that imports nothing of the core's side or the SDK: what a program it runs gets."""

import json
import os
import subprocess
import sys

NAMES = ("EDGE_CONTROL_FD", "EDGE_IPC_FD", "EDGE_IPC_WATCH_FD")

# Which of the worker's handed sockets (by inode, given on argv) this program holds.
_HELD = """
import json, os, sys
wanted = json.loads(sys.argv[1])
held = {}
for name, inode in wanted.items():
    try:
        held[name] = os.fstat(int(os.environ[name])).st_ino == inode
    except (KeyError, OSError):
        held[name] = False
print(json.dumps(held))
"""


def held_descriptors(event, context):
    """Run a program with every inheritable descriptor open, as os.system does; what it holds."""
    inodes = {n: os.fstat(int(os.environ[n])).st_ino for n in NAMES if n in os.environ}
    program = subprocess.run(
        [sys.executable, "-S", "-c", _HELD, json.dumps(inodes)],
        close_fds=False,
        capture_output=True,
        check=True,
        text=True,
    )
    return {"handed": sorted(inodes), "executed": json.loads(program.stdout)}
