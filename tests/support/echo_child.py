# SPDX-License-Identifier: Apache-2.0
"""A one-shot child that answers its request with itself (`python -m tests.support.echo_child`)."""

from edge.oneshot.wire import answer_pipe, pack, read_frame

out = answer_pipe()
out.write(pack({"result": read_frame(0)}))
out.close()
