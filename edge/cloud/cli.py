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
import sys
from collections.abc import Callable, Coroutine, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edge.cloud import bulkcli, definitions, groups, prune
from edge.cloud.cliparser import ArgumentError, build_parser
from edge.cloud.config import CloudConfig, load_cloud_config
from edge.cloud.errors import BrokerError, CloudUsageError
from edge.cloud.groups import GROUP_VERSION_KEYS
from edge.cloud.ids import Arns
from edge.cloud.jsontext import strict_json
from edge.cloud.status import FAILURE, SUCCESS
from edge.cloud.tags import list_tags, tag_resource, untag_resource
from edge.errors import EdgeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.cloud.db import Database, Row
    from edge.cloud.definitions import Kind

# Each command imports what only it needs when it runs (PLC0415 below): scripts and tests call
# `edge cloud` many times, and a command that reads the database must not pay for the AWS SDK
# (aiobotocore, botocore, aiohttp: about half a second), the MQTT client or the signing code,
# nor `--help` or a mistyped argument for SQLAlchemy. The modules imported above import the
# database only for their annotations.

EXIT_USER_ERROR: Final = 2
EXIT_DEPLOYMENT_FAILED: Final = 1
EXIT_WAIT_TIMEOUT: Final = 3
#: While a command runs under a client token: the answers it prints, the first to be kept.
_ANSWERS: ContextVar[list[dict[str, Any]] | None] = ContextVar("edge_cloud_answers", default=None)


def main(argv: Sequence[str]) -> int:
    """Run one `edge cloud` command; return the exit status."""
    try:
        args = _parse(argv)
        config = load_cloud_config(args.config)
        return _dispatch(config, args)
    except ArgumentError as exc:
        _error(str(exc))
    except EdgeError as exc:
        _error(str(exc))
    except KeyboardInterrupt:
        _error("interrupted")
    return EXIT_USER_ERROR


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if "config" not in args:
        raise ArgumentError("--config is required (see `edge cloud --help`)")
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
    answers = _ANSWERS.get()
    if answers is not None and result is not None:
        answers.append(result)
    if result:
        _out(json.dumps(result, indent=4))


def _serve(config: CloudConfig, _args: argparse.Namespace) -> int:
    from edge.cloud.serve import run  # noqa: PLC0415 - see the imports

    return run(config)


def _migrate(config: CloudConfig, args: argparse.Namespace) -> int:
    from edge.cloud.dbcopy import migrate  # noqa: PLC0415 - see the imports

    return migrate(config, args.source, args.target, args.to_password_file, progress=_err)


def _simulate(config: CloudConfig, args: argparse.Namespace) -> int:
    from edge.cloud import simulate  # noqa: PLC0415 - see the imports

    return simulate.run(config, args)


def _dispatch(config: CloudConfig, args: argparse.Namespace) -> int:
    command: str = args.command
    standalone = _STANDALONE.get(command)
    if standalone is not None:
        return standalone(config, args)
    from edge.cloud.db import open_database  # noqa: PLC0415 - see the imports

    with open_database(config) as db:
        token = getattr(args, "amzn_client_token", None)
        if token is not None:
            return _once(config, db, args, token)
        return _run(config, db, args)


def _once(config: CloudConfig, db: Database, args: argparse.Namespace, token: str) -> int:
    """Run a command under a client token: a repeated token prints the first answer again.

    Commands keep their own tokens (`edge cloud COMMAND`), apart from the API's: the same
    token means the same request among commands, as among API calls.
    """
    from edge.cloud import idempotency  # noqa: PLC0415 - see the imports
    from edge.cloud.db import Claim  # noqa: PLC0415 - see the imports

    skipped = {"config", "command", "kind", "amzn_client_token", "wait", "timeout"}
    params = {k: v for k, v in vars(args).items() if k not in skipped}
    key = idempotency.key_of(f"edge cloud {args.command}", token, params)
    earlier = idempotency.earlier_answer(db, key)
    if earlier is not None:
        _print(earlier)
        return 0
    claim = Claim(None, 0, client_token=key)
    answers: list[dict[str, Any]] = []
    printed = _ANSWERS.set(answers)
    try:
        status = _run(config, db.with_claim(claim), args)
    except BaseException:
        db.release(claim)
        raise
    finally:
        _ANSWERS.reset(printed)
    if claim.recorded:
        idempotency.store_answer(db, key, answers[0] if answers else {})
    return status


def _run(config: CloudConfig, db: Database, args: argparse.Namespace) -> int:
    """Run a command that works on the database."""
    command: str = args.command
    arns = Arns(config.aws.region, config.cloud.account_id)
    if command == "publish-function":
        from edge.cloud.artifacts import publish_function  # noqa: PLC0415 - see the imports

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
    if command in _DEPLOYMENT_COMMANDS:
        return _deployment_command(config, db, args)
    if command in bulkcli.COMMANDS:
        tags = read_tags_arg("--tags", args.tags) if getattr(args, "tags", None) else {}
        return bulkcli.run(config, db, args, tags=tags, show=_print)
    if "kind" in args:
        _print(_definition_command(db, arns, args.kind, command, args))
        if command in {"create-function-definition", "create-function-definition-version"}:
            _warn_code(config, db, args)
        return 0
    _print(_group_command(db, arns, command, args))
    return 0


_DEPLOYMENT_COMMANDS: Final = frozenset(
    {"create-deployment", "reset-deployments", "get-deployment-status", "list-deployments"}
)


def _warn_code(config: CloudConfig, db: Database, args: argparse.Namespace) -> None:
    """Warn at once about functions whose code is neither published nor in AWS Lambda."""
    from edge.cloud.lambdacode import missing_functions  # noqa: PLC0415 - see the imports

    if getattr(args, "items", None) is not None:
        version = {"Functions": read_json_arg("--functions", args.items)}
    else:
        version = _optional_json("--initial-version", args.initial_version)
    for warning in asyncio.run(missing_functions(config, db, version)):
        _err(f"edge: warning: {warning}")


def _import_greengrass(config: CloudConfig, args: argparse.Namespace) -> int:
    """Read the V1 account, then store each group; exit 1 if a group had a conflict."""
    from edge.cloud.db import open_database  # noqa: PLC0415 - see the imports
    from edge.cloud.v1import.reader import read_account  # noqa: PLC0415 - see the imports
    from edge.cloud.v1import.report import report_lines  # noqa: PLC0415 - see the imports
    from edge.cloud.v1import.writer import import_account  # noqa: PLC0415 - see the imports

    progress = _Progress()
    account = asyncio.run(read_account(config, list(args.group_ids), progress))
    with open_database(config) as db:
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
    from edge.cloud.db import open_database  # noqa: PLC0415 - see the imports
    from edge.cloud.keys import init_signing_key  # noqa: PLC0415 - see the imports

    files = init_signing_key(config.cloud.signing_key, config.cloud.public_key)
    open_database(config).close()
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
        tags = None if args.tags is None else read_tags_arg("--tags", args.tags)
        return definitions.create_definition(
            db, arns, kind, name=args.name, initial=initial, tags=tags
        )

    def create_version() -> dict[str, Any]:
        body: dict[str, Any] = {kind.list_key: read_json_arg(kind.list_option, args.items)}
        default_config = _optional_json("--default-config", getattr(args, "default_config", None))
        if default_config is not None:
            body["DefaultConfig"] = default_config
        return definitions.create_version(db, arns, kind, args.definition_id, body)

    def delete() -> None:
        definitions.delete_definition(db, kind, args.definition_id)

    def update() -> None:
        definitions.update_definition(db, kind, args.definition_id, args.name)

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
        f"update-{n}-definition": update,
    }
    result: dict[str, Any] | None = commands[command]()
    return result


def _optional_json(option: str, value: str | None) -> Any:  # noqa: ANN401 - any JSON value
    return None if value is None else read_json_arg(option, value)


_TAG_COMMANDS: Final = frozenset({"tag-resource", "untag-resource", "list-tags-for-resource"})


def _tag_command(db: Database, command: str, args: argparse.Namespace) -> dict[str, Any] | None:
    if command == "tag-resource":
        tag_resource(db, args.resource_arn, read_tags_arg("--tags", args.tags))
        return None
    if command == "untag-resource":
        untag_resource(db, args.resource_arn, list(args.tag_keys))
        return None
    return list_tags(db, args.resource_arn)


def _group_command(  # noqa: PLR0911 - one per command
    db: Database, arns: Arns, command: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    if command == "create-group":
        initial = _optional_json("--initial-version", args.initial_version)
        tags = None if args.tags is None else read_tags_arg("--tags", args.tags)
        return groups.create_group(db, arns, name=args.name, initial=initial, tags=tags)
    if command == "update-group":
        groups.update_group(db, args.group_id, args.name)
        return None
    if command == "delete-group":
        groups.delete_group(db, args.group_id)
        return None
    if command in _TAG_COMMANDS:
        return _tag_command(db, command, args)
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
    from edge.cloud import deployment_reads  # noqa: PLC0415 - see the imports

    if args.command == "list-deployments":
        _print(deployment_reads.list_deployments(db, args.group_id))
        return 0
    if args.command == "get-deployment-status":

        def warn(exc: BrokerError) -> None:
            _err(f"edge: warning: showing the recorded status only: {exc}")

        _print(
            asyncio.run(
                deployment_reads.get_deployment_status(
                    config, db, args.group_id, args.deployment_id, on_broker_error=warn
                )
            )
        )
        _note(deployment_reads.deployment_note(db, args.group_id, args.deployment_id))
        return 0
    if args.timeout <= 0:
        raise CloudUsageError("--timeout", "must be a positive number of seconds")
    from edge.cloud import deployments  # noqa: PLC0415 - see the imports
    from edge.signing import load_signing_key  # noqa: PLC0415 - see the imports

    if args.command == "create-deployment":
        deployments.check_deployment_type(args.deployment_type)
    signing_key = load_signing_key(config.cloud.signing_key)
    created: dict[str, Any] = {}

    def on_created(result: dict[str, Any]) -> None:
        created.update(result)
        _print(result)
        if args.wait:
            _progress(result["DeploymentId"], {"DeploymentStatus": "Building"})

    follow: dict[str, Any] = {
        "wait_seconds": args.timeout if args.wait else None,
        "on_created": on_created,
        "on_change": lambda status: _progress(created["DeploymentId"], status),
    }
    final = asyncio.run(_send(config, db, signing_key, args, follow))
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


def _send(
    config: CloudConfig,
    db: Database,
    signing_key: Ed25519PrivateKey,
    args: argparse.Namespace,
    follow: dict[str, Any],
) -> Coroutine[Any, Any, Row | None]:
    """The coroutine that sends create-deployment's or reset-deployments' deployment."""
    from edge.cloud import deployments  # noqa: PLC0415 - see the imports

    if args.command == "reset-deployments":
        return deployments.reset_deployments(
            config, db, signing_key, args.group_id, force=args.force, **follow
        )
    request = deployments.Request(
        group_id=args.group_id,
        deployment_type=args.deployment_type,
        group_version_id=args.group_version_id,
        redeploy_of=args.deployment_id,
    )
    return deployments.create_deployment(config, db, signing_key, request, on_note=_note, **follow)


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


def read_tags_arg(option: str, value: str) -> Any:  # noqa: ANN401 - checked by the tag code
    """Read tags as the AWS CLI takes them: JSON, `file://path`, or `Key=Value,Key2=Value2`.

    Raises:
        CloudUsageError: Neither JSON nor `Key=Value` pairs.
    """
    if value.lstrip().startswith("{") or value.startswith(("file://", "fileb://")):
        return read_json_arg(option, value)
    tags: dict[str, str] = {}
    for pair in value.split(","):
        key, sep, item = pair.partition("=")
        if not sep:
            raise CloudUsageError(
                option, 'takes JSON ({"key": "value"}), file://path, or Key=Value,Key2=Value2'
            )
        tags[key] = item
    return tags


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


#: Commands that open no control-plane database of the caller's (or open it their own way).
_STANDALONE: Final[dict[str, Callable[[CloudConfig, argparse.Namespace], int]]] = {
    "init": lambda config, _args: _init(config),
    "serve": _serve,
    "import-greengrass": _import_greengrass,
    "migrate": _migrate,
    "simulate-cores": _simulate,
    "prune": prune.run,
}
