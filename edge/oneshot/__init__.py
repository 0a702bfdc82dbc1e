# SPDX-License-Identifier: Apache-2.0
"""Modules run as short-lived children of the core, one request each, over msgpack pipes.

`wire` is what both sides share (framing, the error allow-list), with no asyncio, so that a
synchronous child imports it in a few milliseconds; `run` is the core's side (start, ask,
deadline, kill, stderr relayed into the core's log).
"""
