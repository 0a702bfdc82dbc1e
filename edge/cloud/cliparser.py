# SPDX-License-Identifier: Apache-2.0
"""The `edge cloud` argument parser: one subcommand per AWS CLI command, with its flags.

`edge.cloud.cli` runs what it parses; commands with a module of their own (bulk deployments,
prune) add their arguments through the `add` helper handed to them. `simulate-cores`' options
are here: its module imports the MQTT client and the core's code, which parsing must not. The
modules this one imports load neither SQLAlchemy nor the AWS SDK, so `--help` and a mistyped
argument answer at once.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Final, NoReturn

from edge.cloud import bulkcli, prune
from edge.cloud.definitions import KINDS, Kind
from edge.cloud.groups import DEPLOYMENT_TYPES, GROUP_VERSION_KEYS, option_name

#: Default of `create-deployment --wait --timeout`: a deployment of many secrets over a slow
#: link takes tens of seconds; five minutes means something is wrong.
DEFAULT_WAIT_SECONDS: Final = 300.0
_TAGS_HELP: Final = 'Key=Value,Key2=Value2, or JSON or file://path: {"key": "value"} (at most 50)'


class ArgumentError(Exception):
    """argparse's complaint, raised instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse lists all ~45 commands after "invalid choice"; one line is enough.
        match = re.match(r"argument COMMAND: invalid choice: ('[^']*')", message)
        if match is not None:
            message = f"unknown command {match[1]}"
        raise ArgumentError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The `edge cloud` argument parser, with one subcommand per AWS CLI command."""
    common = _Parser(add_help=False)
    # SUPPRESS: --config may come before or after the command without one hiding the other.
    common.add_argument(
        "--config", "-c", type=Path, default=argparse.SUPPRESS, help="the control plane's TOML"
    )
    parser = _Parser(
        prog="edge cloud",
        parents=[common],
        description="The control plane: versioned definitions, groups, signed deployments.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str, **defaults: Any) -> argparse.ArgumentParser:  # noqa: ANN401
        p = sub.add_parser(name, help=text, description=text, parents=[common])
        p.set_defaults(**defaults)
        return p

    add("init", "create the signing key (0600) and <signing_key>.pub; print the .pub path")
    add(
        "serve",
        "serve the Greengrass V1 REST API (SigV4) on [cloud] listen until SIGINT/SIGTERM; "
        "see docs/cloud.md",
    )
    for kind in KINDS.values():
        _add_definition_commands(add, kind)
    _add_group_commands(add)
    _add_deployment_commands(add)
    bulkcli.add_arguments(add, _TAGS_HELP)
    _add_simulate_arguments(
        add(
            "simulate-cores",
            "run simulated cores that answer their deployments, to load-test a control plane; "
            "each process serves its cores on one MQTT connection (see docs/cloud.md)",
        )
    )
    p = add("publish-function", "store a function's zip in S3 for deployments to carry")
    p.add_argument("--function-arn", required=True)
    p.add_argument("--zip-file", required=True, help="fileb://path of the deployment package")
    p.add_argument("--handler", required=True, help="module.function")
    p = add(
        "import-greengrass",
        "copy the Greengrass V1 groups of the [aws] account, keeping ids and ARNs; "
        "see docs/cloud.md",
    )
    p.add_argument(
        "--group-id",
        dest="group_ids",
        action="append",
        default=[],
        help="import only this group (repeatable; default: every group)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be copied; write nothing"
    )
    prune.add_arguments(
        add(
            "prune",
            "remove old deployments, their statuses and finished bulk deployments, keeping "
            "each group's last deployment; and expired client tokens (see docs/cloud.md)",
        )
    )
    p = add("migrate", "copy a SQLite control plane into an empty PostgreSQL database")
    p.add_argument("--from", dest="source", type=Path, required=True, help="the SQLite file")
    p.add_argument("--to", dest="target", required=True, help="postgresql://USER@HOST:PORT/DB")
    p.add_argument("--to-password-file", type=Path, help="default: [cloud] database_password_file")
    return parser


def _add_definition_commands(add: Any, kind: Kind) -> None:  # noqa: ANN401 - the add() helper
    n, label = kind.noun, kind.label
    id_opt = f"--{n}-definition-id"
    p = add(f"create-{n}-definition", f"create a {label}", kind=kind)
    p.add_argument("--name")
    p.add_argument("--initial-version", help=f'JSON or file://path: {{"{kind.list_key}": [...]}}')
    p.add_argument("--tags", help=_TAGS_HELP)
    _add_token(p)
    p = add(f"create-{n}-definition-version", f"add an immutable version to a {label}", kind=kind)
    _add_token(p)
    p.add_argument(id_opt, dest="definition_id", required=True)
    p.add_argument(kind.list_option, dest="items", required=True, help="JSON or file://path")
    if n == "function":
        p.add_argument("--default-config", help="JSON or file://path (stored, not deployed)")
    p = add(f"get-{n}-definition", f"show a {label}", kind=kind)
    p.add_argument(id_opt, dest="definition_id", required=True)
    p = add(f"get-{n}-definition-version", f"show a {label} version", kind=kind)
    p.add_argument(id_opt, dest="definition_id", required=True)
    p.add_argument(f"--{n}-definition-version-id", dest="version_id", required=True)
    add(f"list-{n}-definitions", f"list {label}s", kind=kind)
    p = add(f"list-{n}-definition-versions", f"list a {label}'s versions, newest first", kind=kind)
    p.add_argument(id_opt, dest="definition_id", required=True)
    p = add(f"delete-{n}-definition", f"delete a {label} and its versions", kind=kind)
    p.add_argument(id_opt, dest="definition_id", required=True)
    p = add(f"update-{n}-definition", f"rename a {label}", kind=kind)
    p.add_argument(id_opt, dest="definition_id", required=True)
    p.add_argument("--name")


def _add_group_commands(add: Any) -> None:  # noqa: ANN401 - the add() helper
    p = add("create-group", "create a group")
    p.add_argument("--name", required=True)
    p.add_argument("--initial-version", help="JSON or file://path of definition version ARNs")
    p.add_argument("--tags", help=_TAGS_HELP)
    _add_token(p)
    p = add("update-group", "rename a group")
    p.add_argument("--group-id", required=True)
    p.add_argument("--name")
    p = add("delete-group", "delete a group, its versions and deployments (reset it first)")
    p.add_argument("--group-id", required=True)
    p = add("tag-resource", "add or replace tags of a group or definition")
    p.add_argument("--resource-arn", required=True)
    p.add_argument("--tags", required=True, help=_TAGS_HELP)
    p = add("untag-resource", "remove tags of a group or definition")
    p.add_argument("--resource-arn", required=True)
    p.add_argument("--tag-keys", required=True, nargs="+", metavar="KEY")
    p = add("list-tags-for-resource", "show the tags of a group or definition")
    p.add_argument("--resource-arn", required=True)
    p = add("create-group-version", "validate a whole group and store it as a new version")
    p.add_argument("--group-id", required=True)
    _add_token(p)
    for key in GROUP_VERSION_KEYS:
        p.add_argument(option_name(key), dest=key)
    p = add("get-group", "show a group")
    p.add_argument("--group-id", required=True)
    p = add("get-group-version", "show a group version")
    p.add_argument("--group-id", required=True)
    p.add_argument("--group-version-id", required=True)
    add("list-groups", "list groups")
    p = add("list-group-versions", "list a group's versions, newest first")
    p.add_argument("--group-id", required=True)


def _add_deployment_commands(add: Any) -> None:  # noqa: ANN401 - the add() helper
    p = add("create-deployment", "sign a group version and publish it to its core")
    p.add_argument("--group-id", required=True)
    p.add_argument("--group-version-id", help="default: the group's latest version")
    p.add_argument(
        "--deployment-type", required=True, help=" or ".join(DEPLOYMENT_TYPES), metavar="TYPE"
    )
    p.add_argument("--deployment-id", help="for a Redeployment: the deployment to repeat")
    _add_wait(p)
    _add_token(p)
    p = add("reset-deployments", "send the group's core a reset: it empties its store")
    p.add_argument("--group-id", required=True)
    p.add_argument(
        "--force", action="store_true", help="record the reset even if the core can't be reached"
    )
    _add_wait(p)
    _add_token(p)
    p = add("get-deployment-status", "show a deployment's status")
    p.add_argument("--group-id", required=True)
    p.add_argument("--deployment-id", required=True)
    p = add("list-deployments", "list a group's deployments, newest first")
    p.add_argument("--group-id", required=True)


def _add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    """`simulate-cores`'s options (`edge.cloud.simulate` runs the command)."""
    p.add_argument("--count", type=int, help="how many cores (with --things-file: at most)")
    p.add_argument(
        "--prefix", default="sim-", help="thing names are PREFIX0, PREFIX1, … (default sim-)"
    )
    p.add_argument("--things-file", type=Path, help="thing names, one a line, instead")
    p.add_argument(
        "--failure-rate",
        type=float,
        default=0.0,
        help="share of deployments answered Failure, 0 to 1 (default 0)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="processes to spread the cores over (default: one per CPU)",
    )
    p.add_argument(
        "--connection-per-core",
        action="store_true",
        help="one MQTT connection per core (default: one per process, for all its cores)",
    )
    p.add_argument(
        "--cores-per-connection",
        type=int,
        help="cores sharing one MQTT connection (default: all of a process's cores)",
    )
    p.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        help="public key to verify envelopes with (repeatable; default <signing_key>.pub)",
    )
    p.add_argument("--seed", type=int, help="seed of the failure draw, for repeatable runs")
    p.add_argument(
        "--progress-seconds",
        type=float,
        default=5.0,
        help="seconds between progress lines on stderr (default 5)",
    )


def _add_token(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--amzn-client-token",
        help="make the command idempotent: repeated with this token, it prints the first answer",
    )


def _add_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow it; exit 1 on Failure")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        help=f"with --wait: seconds before giving up, exit 3 (default {DEFAULT_WAIT_SECONDS:g})",
    )
