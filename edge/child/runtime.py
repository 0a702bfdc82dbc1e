# SPDX-License-Identifier: Apache-2.0
"""The Lambda runtime inside a worker process: load the handler, answer invocations forever.

Runs as `python -S -m edge.child.runtime` in a child the manager spawned. It talks to the
manager over an inherited socket (EDGE_CONTROL_FD) with the IPC's framing: `Invoke` in,
`InvokeResult` out, one at a time. Handler code reaches the core's services (secrets, invoke,
publish) through the Greengrass SDK, over the core's IPC socket, not through this channel.

Lean on purpose: V1's smallest MemorySize (16 MB of resident memory) must fit the interpreter,
this loop, the SDK and the user's handler. So: no asyncio, no logging setup, no structlog, and
nothing from the core side; `traceback` is imported only when a handler fails. The control
channel is a `_socket.socket`, the C type that `socket.socket` wraps: this loop only reads and
writes bytes on a descriptor it was handed, and the `socket` module would add about 0.5 MB
(`selectors`, and enums of every address family and socket option) to every worker whose code
doesn't load it anyway.
"""

from __future__ import annotations

import _socket
import importlib
import json
import os
import sys
import time

from edge.child import exits
from edge.ipc.protocol import NEED_DATA, Connection, Invoke, InvokeResult, Role

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_READ_SIZE = 65536


class ClientContext:
    """V1's `context.client_context`: the decoded base64 JSON the caller passed."""

    def __init__(self, raw: str) -> None:
        decoded: dict[str, Any] = {}
        if raw:
            import base64  # noqa: PLC0415 - only when a caller passed one: most never do

            try:
                value = json.loads(base64.b64decode(raw))
                decoded = value if isinstance(value, dict) else {}
            except ValueError:
                decoded = {}
        self.custom = decoded.get("custom")
        self.env = decoded.get("env")
        self.client = decoded.get("client")


class LambdaContext:
    """The `context` argument of a V1 handler."""

    def __init__(self, invoke: Invoke, memory_kb: int) -> None:
        arn = invoke.function_arn
        parts = arn.split(":")
        self.function_name = parts[6] if len(parts) > 6 else arn  # noqa: PLR2004 - ARN layout
        self.function_version = parts[7] if len(parts) > 7 else "$LATEST"  # noqa: PLR2004
        self.invoked_function_arn = arn
        self.memory_limit_in_mb = max(1, memory_kb // 1024)
        self.aws_request_id = invoke.invocation_id
        self.client_context = ClientContext(invoke.client_context)
        self.identity = None
        self._deadline_ms = invoke.deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the core times this invocation out."""
        return max(0, self._deadline_ms - int(time.monotonic() * 1000))


def load_handler(spec: str) -> Callable[[Any, LambdaContext], Any]:
    """Import `module.function` (modules may be dotted) from the function's code."""
    module_name, _, function_name = spec.rpartition(".")
    module = importlib.import_module(module_name)
    handler = getattr(module, function_name)
    if not callable(handler):
        raise TypeError(f"{spec} is not callable")
    return handler  # type: ignore[no-any-return]


def decode_event(payload: bytes) -> Any:  # noqa: ANN401 - whatever the caller sent
    """V1 hands a handler the JSON-decoded payload, or the raw bytes if it isn't JSON."""
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload


def run_handler(
    handler: Callable[[Any, LambdaContext], Any], invoke: Invoke, memory_kb: int
) -> InvokeResult:
    """Call the handler once and turn its result or exception into an `InvokeResult`."""
    context = LambdaContext(invoke, memory_kb)
    try:
        result = handler(decode_event(invoke.payload), context)
        payload = result if isinstance(result, bytes) else json.dumps(result).encode()
        error = ""
    except Exception as exc:  # noqa: BLE001 - a handler's exception is its answer
        import traceback  # noqa: PLC0415 - only on failure: keeps the resident set small

        payload = json.dumps(
            {
                "errorMessage": str(exc),
                "errorType": type(exc).__name__,
                "stackTrace": traceback.format_tb(exc.__traceback__),
            }
        ).encode()
        error = "Handled"
        traceback.print_exc()
    return InvokeResult(invocation_id=invoke.invocation_id, payload=payload, function_error=error)


def serve(
    sock: _socket.socket, handler: Callable[[Any, LambdaContext], Any], memory_kb: int
) -> None:
    """Answer invocations from the manager until it closes the channel."""
    conn = Connection(Role.WORKER)
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            data = sock.recv(_READ_SIZE)
            conn.receive_data(data)
            if not data:
                return
            continue
        if isinstance(event, Invoke):
            result = run_handler(handler, event, memory_kb)
            sock.sendall(conn.send(result))
        else:
            return


def confine_and_open_code() -> None:
    """Apply the core's confinement plan, then the deferred variables and the code's path.

    In this order, so that nothing from the code directory is imported, and no PYTHON* variable
    of the deployment's is set, while the worker is still unconfined.
    """
    plan = os.environ.pop("EDGE_SANDBOX", None)
    if plan:
        from edge.child.confine import confine  # noqa: PLC0415 - only when asked

        confine(json.loads(plan))
    # The deployment's PYTHON* variables that the interpreter would have acted on at start.
    deferred = os.environ.pop("EDGE_DEFERRED_ENV", None)
    if deferred:
        os.environ.update(json.loads(deferred))
    code_dir = os.environ.get("EDGE_CODE_DIR")
    if code_dir:
        sys.path.insert(0, code_dir)
        # The handler's own Python children see the path a V1 function saw.
        inherited = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (code_dir, inherited)))


#: The descriptors the core hands a worker: its control channel, and for a worker of another
#: user the connected IPC sockets (see edge.child.function).
_HANDED_FD_VARIABLES = ("EDGE_CONTROL_FD", "EDGE_IPC_FD", "EDGE_IPC_WATCH_FD")


def _close_on_exec_inherited() -> None:
    """Keep the core's connections out of every program the function executes.

    Before the function's code runs: `os.system`, or `subprocess` with `close_fds=False`,
    passes every inheritable descriptor on, and a program holding the control channel or an
    IPC socket could speak to the core as this function.
    """
    for variable in _HANDED_FD_VARIABLES:
        try:
            os.set_inheritable(int(os.environ[variable]), False)  # noqa: FBT003 - positional
        except (KeyError, ValueError, OSError):
            continue  # not handed to this worker


def main() -> int:
    """Entry point inside the worker process."""
    sock = _socket.socket(fileno=int(os.environ["EDGE_CONTROL_FD"]))
    _close_on_exec_inherited()
    memory_kb = int(os.environ.get("EDGE_MEMORY_KB", "16384"))
    try:
        confine_and_open_code()
    except Exception as exc:  # noqa: BLE001 - any failure to confine stops the worker
        print(f"edge: the worker could not be confined: {exc}", file=sys.stderr)  # noqa: T201
        unreachable = type(exc).__name__ == "InterpreterUnreachableError"  # confine's, lazily
        return exits.INTERPRETER_UNREACHABLE if unreachable else exits.SANDBOX_FAILED
    try:
        handler = load_handler(os.environ["EDGE_HANDLER"])
    except Exception:  # noqa: BLE001 - report any import failure, then exit
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        return exits.HANDLER_LOAD_FAILED
    try:
        serve(sock, handler, memory_kb)
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
