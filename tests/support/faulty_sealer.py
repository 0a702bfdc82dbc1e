# SPDX-License-Identifier: Apache-2.0
"""A crypto child that fails as `EDGE_TEST_SEALER_FAULT` says (`python -m ...faulty_sealer`).

- `half`: does the real work, writes half of its answer, then is SIGKILLed (by itself);
- `garbage`: answers bytes that are not msgpack;
- `exit`: exits with status 3 without an answer;
- `hang`: never answers;
- `slow`: answers for real after 0.2 s, saying `faulty-sealer-done=<pid>` on stderr first.

It writes its pid to stderr first, so that a test can see it is gone afterwards.
"""

import os
import signal
import sys
import time

from edge.oneshot.wire import answer_pipe, pack, read_frame
from edge.secrets.sealer import serve

print(f"faulty-sealer-pid={os.getpid()}", file=sys.stderr, flush=True)
fault = os.environ["EDGE_TEST_SEALER_FAULT"]
out = answer_pipe()
request = read_frame(0)
if fault == "half":
    answer = pack(serve(request))
    out.write(answer[: len(answer) // 2])
    out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
elif fault == "garbage":
    out.write(b"\xc1\xc1 not msgpack")
    out.flush()
    time.sleep(120)
elif fault == "exit":
    sys.exit(3)
elif fault == "slow":
    time.sleep(0.2)
    print(f"faulty-sealer-done={os.getpid()}", file=sys.stderr, flush=True)
    out.write(pack(serve(request)))
    out.flush()
else:
    time.sleep(120)
