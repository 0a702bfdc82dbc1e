# SPDX-License-Identifier: Apache-2.0
"""`edge demo`: the reference document's story, end to end, on this machine, in seconds.

With nothing installed but the package and its `demo` extra, it starts in one process tree an
MQTT broker (amqtt, `edge.demo.broker`), Secrets Manager and S3 (moto's server), a control
plane (`edge cloud` commands, exactly as a person would type them) and a core (`edge run`),
all on loopback ports and in a throwaway directory. Then it plays the story of
`greengrass-v1-secret-resources.md` (`edge.demo.story`): a secret with extra staging labels,
the reference resource and function definitions, the reference handler published with the
unmodified `greengrasssdk`, a signed deployment, an invocation that reads the secret, a
rotation and a redeployment. Secret values are never printed: every line goes through the
core's redaction, and the function answers which version it read and its length, never the value.

Everything stops and the directory is removed at the end, on a failure, on Ctrl-C and on
SIGTERM; `--keep` leaves it all running and prints the commands to try.

Importing this package needs neither amqtt nor moto; `run_demo` checks for them. What the demo
deploys is `edge.fixtures.reference`, which docker/deploy.sh and the tests use too.
"""

from edge.demo.story import DemoUnavailableError, run_demo

__all__ = ["DemoUnavailableError", "run_demo"]
