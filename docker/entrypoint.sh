#!/bin/sh
# The image's entrypoint. With no arguments: create the state directory and the core key if
# they are missing (`edge init` never replaces a key), then become the core, so that `docker
# stop`'s SIGTERM reaches it and it stops cleanly. With arguments: run that `edge` command.
set -eu
config="${EDGE_CONFIG:-/etc/edge/core.toml}"
if [ "$#" -eq 0 ]; then
    edge init --config "$config"
    exec edge run --config "$config"
fi
exec edge "$@"
