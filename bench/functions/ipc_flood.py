# SPDX-License-Identifier: Apache-2.0
"""A Greengrass V1 Lambda handler that floods the core's IPC socket with its own token.

It opens connections to the socket its worker was given and says Hello on each with the
worker's own token, from the worker's own process, so the kernel's peer credentials match: to
the core it is the worker. It keeps the connections the core welcomes and counts what the core
answered to the others, prints that as one line (`flood {...}`), then goes on opening more,
ten at a time, for `hold_seconds`. Used by `bench/flood_ipc.py` and
`tests/integration/test_ipc_limits.py`.

Event (JSON):
  connections   how many to open at first, in batches of 50 (a multiple of 50)
  hold_seconds  how long to go on afterwards, holding the welcomed ones
"""

import json
import os
import socket
import struct
import time

import msgpack


def _frame(obj):
    """A length-prefixed msgpack frame, as the core reads them."""
    payload = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def _first_frame(sock):
    """The core's first frame on a connection, or None if it closed without one."""
    data = b""
    try:
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return msgpack.unpackb(data[4 : 4 + struct.unpack(">I", data[:4])[0]])


def _count(answers, key):
    """One more of `key`."""
    answers[key] = answers.get(key, 0) + 1


def _attempt(path, hello, batch, answers, held):
    """Open `batch` connections, say Hello on each, then read each one's answer."""
    opened = []
    for _ in range(batch):
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            _count(answers, "socket failed: " + exc.strerror)
            continue
        sock.settimeout(10)
        try:
            sock.connect(path)
            sock.sendall(hello)
        except OSError as exc:
            sock.close()
            _count(answers, "connect failed: " + exc.strerror)
            continue
        opened.append(sock)
    for sock in opened:
        frame = _first_frame(sock)
        if frame is None:
            key = "closed"
        elif frame["type"] == "goodbye":
            key = "goodbye: " + frame["reason"]
        else:
            key = frame["type"]
        _count(answers, key)
        if key == "welcome":
            held.append(sock)
        else:
            sock.close()


def flood(event, context):  # noqa: ARG001 - V1's handler signature
    """Open `connections`, then keep trying for `hold_seconds`; answer what the core said."""
    path = os.environ["EDGE_IPC_SOCKET"]
    token = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    hello = _frame({"type": "hello", "token": token, "pid": os.getpid()})
    answers, held = {}, []
    for _ in range(event["connections"] // 50):
        _attempt(path, hello, 50, answers, held)
    print("flood " + json.dumps(answers), flush=True)
    until = time.monotonic() + event["hold_seconds"]
    while time.monotonic() < until:
        _attempt(path, hello, 10, {}, held)
        time.sleep(0.01)
    return {"held": len(held), "answers": answers}
