# SPDX-License-Identifier: Apache-2.0
"""`edge cloud …`: the AWS CLI's Greengrass V1 commands, flags and JSON, against our control plane.

Thin on purpose: parse the arguments, call one function of `edge.cloud`, print its answer as
JSON with AWS's key names. JSON arguments are inline text or `file://path`, binary ones
`fileb://path`, as with the AWS CLI. Every error is one line, `edge: error: …`, exit status 2;
a deployment that fails under `--wait` exits 1, and one that doesn't finish in time exits 3;
an `import-greengrass` that left a group out over a conflict exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

from edge.cloud import definitions, deployments, groups
from edge.cloud.artifacts import publish_function
from edge.cloud.config import CloudConfig, load_cloud_config
from edge.cloud.db import Database
from edge.cloud.definitions import KINDS, Kind
from edge.cloud.deployments import DEPLOYMENT_TYPES, Request
from edge.cloud.groups import GROUP_VERSION_KEYS, option_name
from edge.cloud.ids import Arns
from edge.cloud.jsontext import strict_json
from edge.cloud.keys import init_signing_key
from edge.cloud.lambdacode import missing_functions
from edge.cloud.status import FAILURE, SUCCESS
from edge.errors import BrokerError, CloudUsageError, EdgeError
from edge.signing import load_signing_key

EXIT_USER_ERROR: Final = 2
EXIT_DEPLOYMENT_FAILED: Final = 1
EXIT_WAIT_TIMEOUT: Final = 3
#: Default of `create-deployment --wait --timeout`: a deployment of many secrets over a slow
#: link takes tens of seconds; five minutes means something is wrong.
DEFAULT_WAIT_SECONDS: Final = 300.0


class _ArgumentError(Exception):
    """argparse's complaint, raised instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse lists all ~45 commands after "invalid choice"; one line is enough.
        match = re.match(r"argument COMMAND: invalid choice: ('[^']*')", message)
        if match is not None:
            message = f"unknown command {match[1]}"
        raise _ArgumentError(f"{message} (see `{self.prog} --help`)")


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
    return parser


def _add_definition_commands(add: Any, kind: Kind) -> None:  # noqa: ANN401 - the add() helper
    n, label = kind.noun, kind.label
    id_opt = f"--{n}-definition-id"
    p = add(f"create-{n}-definition", f"create a {label}", kind=kind)
    p.add_argument("--name")
    p.add_argument("--initial-version", help=f'JSON or file://path: {{"{kind.list_key}": [...]}}')
    p = add(f"create-{n}-definition-version", f"add an immutable version to a {label}", kind=kind)
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


def _add_group_commands(add: Any) -> None:  # noqa: ANN401 - the add() helper
    p = add("create-group", "create a group")
    p.add_argument("--name", required=True)
    p.add_argument("--initial-version", help="JSON or file://path of definition version ARNs")
    p = add("create-group-version", "validate a whole group and store it as a new version")
    p.add_argument("--group-id", required=True)
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
    p.add_argument("--deployment-type", required=True, choices=DEPLOYMENT_TYPES)
    p.add_argument("--deployment-id", help="for a Redeployment: the deployment to repeat")
    p.add_argument("--wait", action="store_true", help="follow it; exit 1 on Failure")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        help=f"with --wait: seconds before giving up, exit 3 (default {DEFAULT_WAIT_SECONDS:g})",
    )
    p = add("get-deployment-status", "show a deployment's status")
    p.add_argument("--group-id", required=True)
    p.add_argument("--deployment-id", required=True)
    p = add("list-deployments", "list a group's deployments, newest first")
    p.add_argument("--group-id", required=True)


def main(argv: Sequence[str]) -> int:
    """Run one `edge cloud` command; return the exit status."""
    try:
        args = _parse(argv)
        config = load_cloud_config(args.config)
        return _dispatch(config, args)
    except _ArgumentError as exc:
        _error(str(exc))
    except EdgeError as exc:
        _error(str(exc))
    except KeyboardInterrupt:
        _error("interrupted")
    return EXIT_USER_ERROR


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if "config" not in args:
        raise _ArgumentError("--config is required (see `edge cloud --help`)")
    return args


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _error(message: str) -> None:
    _err(f"edge: error: {message}")


def _print(result: dict[str, Any] | None) -> None:
    # AWS's CLI prints nothing for an empty answer (delete-…).
    if result:
        _out(json.dumps(result, indent=4))


def _dispatch(config: CloudConfig, args: argparse.Namespace) -> int:  # noqa: PLR0911 - one per family
    command: str = args.command
    if command == "init":
        return _init(config)
    if command == "serve":
        # Imported here: aiohttp and botocore's model are only needed by the service.
        from edge.cloud.serve import run  # noqa: PLC0415

        return run(config)
    if command == "import-greengrass":
        return _import_greengrass(config, args)
    arns = Arns(config.aws.region, config.cloud.account_id)
    with Database.open(config.cloud.database) as db:
        if command == "publish-function":
            package = read_binary_arg("--zip-file", args.zip_file)
            _print(
                asyncio.run(
                    publish_function(
                        config,
                        db,
                        function_arn=args.function_arn,
                        handler=args.handler,
                        package=package,
                    )
                )
            )
            return 0
        if command in {"create-deployment", "get-deployment-status", "list-deployments"}:
            return _deployment_command(config, db, args)
        if "kind" in args:
            _print(_definition_command(db, arns, args.kind, command, args))
            if command in {"create-function-definition", "create-function-definition-version"}:
                _warn_code(config, db, args)
            return 0
        _print(_group_command(db, arns, command, args))
        return 0


def _warn_code(config: CloudConfig, db: Database, args: argparse.Namespace) -> None:
    """Warn at once about functions whose code is neither published nor in AWS Lambda."""
    if getattr(args, "items", None) is not None:
        version = {"Functions": read_json_arg("--functions", args.items)}
    else:
        version = _optional_json("--initial-version", args.initial_version)
    for warning in asyncio.run(missing_functions(config, db, version)):
        _err(f"edge: warning: {warning}")


def _import_greengrass(config: CloudConfig, args: argparse.Namespace) -> int:
    """Read the V1 account, then store each group; exit 1 if a group had a conflict."""
    # Imported here: only this command needs the importer.
    from edge.cloud.v1import.reader import read_account  # noqa: PLC0415
    from edge.cloud.v1import.report import report_lines  # noqa: PLC0415
    from edge.cloud.v1import.writer import import_account  # noqa: PLC0415

    progress = _Progress()
    account = asyncio.run(read_account(config, list(args.group_ids), progress))
    with Database.open(config.cloud.database) as db:
        report = import_account(db, account, dry_run=args.dry_run, progress=progress)
    for line in report_lines(report):
        _out(line)
    return 1 if report.conflicts else 0


class _Progress:
    """`edge: groups 12/40` on stderr, about twenty lines per kind however large the account."""

    def __init__(self) -> None:
        self._shown: dict[str, int] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        step = max(1, total // 20)
        if done == total or done - self._shown.get(what, 0) >= step:
            self._shown[what] = done
            _err(f"edge: {what} {done}/{total}")


def _init(config: CloudConfig) -> int:
    files = init_signing_key(config.cloud.signing_key, config.cloud.public_key)
    Database.open(config.cloud.database).close()
    state = "created" if files.created else "kept the existing"
    _err(f"{state} signing key {files.private_path} (KeyId {files.key_id})")
    _out(str(files.public_path))
    return 0


def _definition_command(
    db: Database, arns: Arns, kind: Kind, command: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    n = kind.noun

    def create() -> dict[str, Any]:
        initial = _optional_json("--initial-version", args.initial_version)
        return definitions.create_definition(db, arns, kind, name=args.name, initial=initial)

    def create_version() -> dict[str, Any]:
        body: dict[str, Any] = {kind.list_key: read_json_arg(kind.list_option, args.items)}
        default_config = _optional_json("--default-config", getattr(args, "default_config", None))
        if default_config is not None:
            body["DefaultConfig"] = default_config
        return definitions.create_version(db, arns, kind, args.definition_id, body)

    def delete() -> None:
        definitions.delete_definition(db, kind, args.definition_id)

    commands: dict[str, Any] = {
        f"create-{n}-definition": create,
        f"create-{n}-definition-version": create_version,
        f"get-{n}-definition": lambda: definitions.get_definition(db, kind, args.definition_id),
        f"get-{n}-definition-version": lambda: definitions.get_version(
            db, kind, args.definition_id, args.version_id
        ),
        f"list-{n}-definitions": lambda: definitions.list_definitions(db, kind),
        f"list-{n}-definition-versions": lambda: definitions.list_versions(
            db, kind, args.definition_id
        ),
        f"delete-{n}-definition": delete,
    }
    result: dict[str, Any] | None = commands[command]()
    return result


def _optional_json(option: str, value: str | None) -> Any:  # noqa: ANN401 - any JSON value
    return None if value is None else read_json_arg(option, value)


def _group_command(
    db: Database, arns: Arns, command: str, args: argparse.Namespace
) -> dict[str, Any]:
    if command == "create-group":
        initial = (
            None
            if args.initial_version is None
            else read_json_arg("--initial-version", args.initial_version)
        )
        return groups.create_group(db, arns, name=args.name, initial=initial)
    if command == "create-group-version":
        refs = {k: getattr(args, k) for k in GROUP_VERSION_KEYS if getattr(args, k) is not None}
        return groups.create_group_version(db, arns, args.group_id, refs)
    if command == "get-group":
        return groups.get_group(db, args.group_id)
    if command == "get-group-version":
        return groups.get_group_version(db, args.group_id, args.group_version_id)
    if command == "list-groups":
        return groups.list_groups(db)
    return groups.list_group_versions(db, args.group_id)


def _deployment_command(config: CloudConfig, db: Database, args: argparse.Namespace) -> int:
    if args.command == "list-deployments":
        _print(deployments.list_deployments(db, args.group_id))
        return 0
    if args.command == "get-deployment-status":

        def warn(exc: BrokerError) -> None:
            _err(f"edge: warning: showing the recorded status only: {exc}")

        _print(
            asyncio.run(
                deployments.get_deployment_status(
                    config, db, args.group_id, args.deployment_id, on_broker_error=warn
                )
            )
        )
        _note(deployments.deployment_note(db, args.group_id, args.deployment_id))
        return 0
    if args.timeout <= 0:
        raise CloudUsageError("--timeout", "must be a positive number of seconds")
    signing_key = load_signing_key(config.cloud.signing_key)
    request = Request(
        group_id=args.group_id,
        deployment_type=args.deployment_type,
        group_version_id=args.group_version_id,
        redeploy_of=args.deployment_id,
    )
    created: dict[str, Any] = {}

    def on_created(result: dict[str, Any]) -> None:
        created.update(result)
        _print(result)
        if args.wait:
            _progress(result["DeploymentId"], {"DeploymentStatus": "Building"})

    final = asyncio.run(
        deployments.create_deployment(
            config,
            db,
            signing_key,
            request,
            wait_seconds=args.timeout if args.wait else None,
            on_created=on_created,
            on_change=lambda status: _progress(created["DeploymentId"], status),
            on_note=_note,
        )
    )
    if not args.wait:
        return 0
    if final is None:
        _error(
            f"deployment {created['DeploymentId']} did not finish within {args.timeout:g} s; "
            f"`edge cloud get-deployment-status --group-id {args.group_id} --deployment-id "
            f"{created['DeploymentId']}` shows it later"
        )
        return EXIT_WAIT_TIMEOUT
    return 0 if final["status"] == SUCCESS else EXIT_DEPLOYMENT_FAILED


def _note(note: str | None) -> None:
    """What the core ignores of a deployment, on stderr (stdout keeps AWS's JSON)."""
    if note is not None:
        _err(f"edge: note: {note}")


def _progress(deployment_id: str, status: dict[str, Any]) -> None:
    """One line per transition, on stderr (stdout keeps the JSON answer)."""
    state = status["DeploymentStatus"]
    line = f"edge: deployment {deployment_id}: {state}"
    if "UpdatedAt" in status:
        line += f" at {status['UpdatedAt']}"
    if state == FAILURE and status.get("ErrorMessage"):
        line += f": {status['ErrorMessage']}"
    _err(line)


# --- AWS CLI argument conventions ------------------------------------------------------------


def read_json_arg(option: str, value: str) -> Any:  # noqa: ANN401 - any JSON value
    """Read a JSON argument: inline text, or `file://path` (as the AWS CLI does).

    Raises:
        CloudUsageError: The file can't be read, or the text is not JSON (repeated keys and
            NaN included: the core would refuse them).
    """
    text = value
    if value.startswith("file://"):
        path = Path(value.removeprefix("file://")).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CloudUsageError(option, f"can't read {path}: {exc}") from None
    elif value.startswith("fileb://"):
        raise CloudUsageError(option, "takes JSON text or file://path, not fileb://")
    return strict_json(option, text)


def read_binary_arg(option: str, value: str) -> bytes:
    """Read a binary argument, which must be `fileb://path` (as the AWS CLI requires).

    Raises:
        CloudUsageError: Not fileb://, or the file can't be read.
    """
    if not value.startswith("fileb://"):
        raise CloudUsageError(option, "must be fileb://path (a binary file), as in the AWS CLI")
    path = Path(value.removeprefix("fileb://")).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CloudUsageError(option, f"can't read {path}: {exc.strerror or exc}") from None
