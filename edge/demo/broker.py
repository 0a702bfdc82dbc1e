# SPDX-License-Identifier: Apache-2.0
"""The demo's embedded MQTT broker: `python -m edge.demo.broker --port N` (amqtt, loopback only).

A process of its own, so its event loop and its logging never mix with the demo's, and
stopping it is one signal. amqtt comes with the `demo` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any


def broker_config(port: int) -> dict[str, Any]:
    """The broker's configuration: one TCP listener on 127.0.0.1:port, anonymous clients."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        # Only what the demo needs: no $SYS topics, no packet logging. Anonymous is fine on
        # loopback for a throwaway demo; a real fleet's broker uses TLS and certificates.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port: int) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down cleanly."""
    # An optional dependency (the demo extra), and untyped.
    from amqtt.broker import Broker  # type: ignore[import-untyped]  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(broker_config(port))
    await broker.start()
    await stop.wait()
    await broker.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `--port` and serve."""
    parser = argparse.ArgumentParser(
        prog="python -m edge.demo.broker", description="The MQTT broker `edge demo` starts."
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
