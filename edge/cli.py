# SPDX-License-Identifier: Apache-2.0
"""The `edge` command line: thin wrappers that parse arguments and call into the package."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.config import Config, load_config
from edge.errors import EdgeError, UsageError
from edge.log import LOG_FORMATS, LOG_LEVELS, configure_logging, get_logger
from edge.secrets.contents import StoreContents
from edge.secrets.keyref import TokenKeyRef

if TYPE_CHECKING:
    from edge.secrets.seal_process import Unsealing
    from edge.workers.sandbox import NamespaceProbe

# Each command imports what it needs when it runs (PLC0415 below): `edge invoke` and `edge
# secrets` are called by scripts, and the core's modules (the AWS SDK above all) would cost
# them most of their wall time and memory.

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge",
        description="An edge runtime that delivers AWS Secrets Manager secrets to devices.",
        parents=[_global_parser()],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config", "-c", required=True, type=Path, help="path to the core's TOML config"
        )
        return p

    init = with_config(
        sub.add_parser(
            "init",
            help="create the state directory and the core key (or, for a pkcs11: key, check it)",
        )
    )
    init.add_argument(
        "--key-type",
        choices=("ec", "rsa"),
        default="ec",
        help="kind of core key to create (default: ec, P-256)",
    )
    init.add_argument(
        "--rsa-bits", type=int, default=2048, help="RSA key size, 2048 or more (default: 2048)"
    )

    with_config(sub.add_parser("run", help="run the core in the foreground until SIGINT/SIGTERM"))
    # Listed for --help only: `main` hands `edge cloud ...` to edge.cloud.cli before parsing.
    sub.add_parser("cloud", help="the control plane; see `edge cloud --help`", add_help=False)

    status = with_config(
        sub.add_parser(
            "status",
            help="the core's connection, last deployment and refusal, store and workers "
            "(exit 0 running and connected, 1 running but not connected, 3 not running, "
            "2 this user may not ask the core)",
        )
    )
    status.add_argument("--json", action="store_true", help="print JSON")

    invoke = with_config(
        sub.add_parser("invoke", help="invoke a deployed function through the running core")
    )
    invoke.add_argument(
        "--function-arn", required=True, help="the function's ARN (qualified or not)"
    )
    invoke.add_argument("--payload", default="", help="the event, as JSON text (default: none)")
    invoke.add_argument(
        "--invocation-type",
        choices=("RequestResponse", "Event"),
        default="RequestResponse",
        help="wait for the result (default) or return at once",
    )

    migrate = sub.add_parser(
        "migrate-core",
        help="write a core.toml from a Greengrass V1 core's config.json (keys are not copied)",
    )
    migrate.add_argument(
        "--greengrass-config",
        required=True,
        type=Path,
        help="the V1 core's config.json, usually /greengrass/config/config.json",
    )
    migrate.add_argument("--output", "-o", required=True, type=Path, help="the core.toml to write")
    migrate.add_argument(
        "--greengrass-root",
        type=Path,
        help="V1's install root, whose certs/ coreThing paths are relative to (default: the "
        "directory above config.json's)",
    )
    migrate.add_argument(
        "--state-dir", help="[core] state_dir to write (default: edge's, state/ beside core.toml)"
    )
    migrate.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        type=Path,
        help="the control plane's public key ({signing_key}.pub) for [deployments] "
        "trusted_keys; repeat for several",
    )
    migrate.add_argument(
        "--role-alias",
        help="AWS IoT role alias: the core exchanges the thing's certificate for short-lived "
        'AWS credentials ([aws] credentials = "iot"); with --iot-credentials-endpoint',
    )
    migrate.add_argument(
        "--iot-credentials-endpoint",
        help="the account's credentials provider host (`aws iot describe-endpoint "
        "--endpoint-type iot:CredentialProvider`)",
    )
    migrate.add_argument("--force", action="store_true", help="replace --output if it exists")

    secrets = sub.add_parser("secrets", help="inspect the local secret store")
    secrets_sub = secrets.add_subparsers(
        dest="secrets_command", required=True, metavar="SUBCOMMAND"
    )
    listing = with_config(
        secrets_sub.add_parser(
            "list", help="list deployed secrets, labels and version ids (never values)"
        )
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    audit = with_config(
        secrets_sub.add_parser(
            "audit",
            help="show which function read which secret and label, allowed or not, how often, "
            "and when first and last (never values)",
        )
    )
    audit.add_argument(
        "--since",
        help="only reads at or after this time: ISO 8601 (2026-11-28T10:00:00Z) or an age "
        "such as 90s, 15m, 2h, 7d",
    )
    audit.add_argument("--function", help="only this function: its ARN or its name")
    audit.add_argument(
        "--json",
        action="store_true",
        help="print the log's JSON lines (one per read per flush interval) instead of a table",
    )

    demo = sub.add_parser(
        "demo",
        help="play the whole story on this machine: broker, Secrets Manager, cloud, core",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave everything running and print the commands to try; Ctrl-C ends it",
    )
    # For tests: the secret's value, so they can prove it is printed nowhere.
    demo.add_argument("--secret-value", help=argparse.SUPPRESS)
    return parser


def _global_parser() -> argparse.ArgumentParser:
    """Options valid before or after any command, `edge cloud` included; they override [log]."""
    parser = argparse.ArgumentParser(prog="edge", add_help=False, allow_abbrev=False)
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="console (coloured on a terminal), json (one object per line), or auto: console "
        "on a terminal, json otherwise (default: [log] format, itself auto by default)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, help="least severe level logged (default: [log] level)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: C901, PLR0911 - one return per command
    """Entry point of the `edge` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The global options are taken out first, wherever they are, so that `edge cloud` (which
    # has a parser of its own) gets them too.
    logging_options, argv = _global_parser().parse_known_args(argv)
    level, fmt = logging_options.log_level, logging_options.log_format
    if argv[:1] in (["cloud"], ["demo"]):
        configure_logging(level=level or "info", fmt=fmt or "auto")
    if argv[:1] == ["cloud"]:
        from edge.cloud.cli import main as cloud_main  # noqa: PLC0415 - see the imports

        return cloud_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from edge.demo import run_demo  # noqa: PLC0415 - only `edge demo` needs it

            return run_demo(keep=args.keep, secret_value=args.secret_value)
        if args.command == "migrate-core":
            return _migrate_core(args)
        config = load_config(args.config)
        configure_logging(level=level or config.log.level, fmt=fmt or config.log.format)
        if args.command == "init":
            return _init(config, key_type=args.key_type, rsa_bits=args.rsa_bits)
        if args.command == "run":
            return _run(config)
        if args.command == "status":
            from edge.cli_status import status_command  # noqa: PLC0415 - only this command

            return status_command(config, as_json=args.json)
        if args.command == "invoke":
            return _invoke(config, args.function_arn, args.payload, args.invocation_type)
        if args.command == "secrets" and args.secrets_command == "audit":
            return _secrets_audit(
                config, since=args.since, function=args.function, as_json=args.json
            )
        if args.command == "secrets":
            return _secrets_list(config, as_json=args.json)
    except EdgeError as exc:
        print(f"edge: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_USER_ERROR  # pragma: no cover - argparse rejects unknown commands first


def _migrate_core(args: argparse.Namespace) -> int:
    from edge.migrate_core import migrate_core  # noqa: PLC0415 - see the imports

    if (args.role_alias is None) != (args.iot_credentials_endpoint is None):
        raise UsageError("--role-alias and --iot-credentials-endpoint go together")
    conversion = migrate_core(
        greengrass_config=args.greengrass_config,
        output=args.output,
        greengrass_root=args.greengrass_root,
        state_dir=args.state_dir,
        trusted_keys=args.trusted_key,
        iot_credentials=(args.iot_credentials_endpoint, args.role_alias)
        if args.role_alias is not None
        else None,
        force=args.force,
    )
    print(f"wrote {args.output} for thing {conversion.thing_name} in {conversion.region}")
    if conversion.pin is not None:
        print(f"wrote the token PIN to {args.output.parent / 'core.pin'} (0600)")
    if conversion.not_mapped:
        print("not carried over:")
        for line in conversion.not_mapped:
            print(f"  {line}")
    for line in conversion.warnings:
        print(f"edge: warning: {line}", file=sys.stderr)
    return 0


def _init(config: Config, *, key_type: str, rsa_bits: int) -> int:
    from edge.secrets.keys import CoreKey, generate_key  # noqa: PLC0415 - see the imports
    from edge.statedir import STATE_DIR_MODE  # noqa: PLC0415 - see the imports

    state_dir = config.core.state_dir
    if state_dir.exists():
        if state_dir.stat().st_mode & 0o077:
            state_dir.chmod(STATE_DIR_MODE)
            print(f"tightened {state_dir} to mode {STATE_DIR_MODE:04o}")
        else:
            print(f"state directory {state_dir} exists")
    else:
        state_dir.mkdir(mode=STATE_DIR_MODE, parents=True)
        # mkdir's mode is filtered by the umask; make sure it is exactly 0700.
        state_dir.chmod(STATE_DIR_MODE)
        print(f"created state directory {state_dir}")
    key_path = config.core.private_key
    if isinstance(key_path, TokenKeyRef):
        # Never generate a key in a token behind the operator's back: check the one named.
        key = CoreKey.load(key_path)
        print(
            f"core key {key_path.uri} is usable ({key.algorithm}, fingerprint "
            f"{key.fingerprint}); it stays in the token"
        )
    elif key_path.exists():
        print(f"core key {key_path} exists; kept it")
    else:
        key_path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        key = generate_key(key_path, kind="rsa" if key_type == "rsa" else "ec", rsa_bits=rsa_bits)
        print(f"created core key {key_path} ({key.algorithm}, fingerprint {key.fingerprint})")
    return 0


def _run(config: Config) -> int:
    from edge.secrets.seal_process import Unsealing  # noqa: PLC0415 - see the imports
    from edge.secrets.storefile import STORE_FILE_NAME  # noqa: PLC0415 - see the imports
    from edge.statedir import check_state_dir  # noqa: PLC0415 - see the imports
    from edge.workers.sandbox import NamespaceProbe  # noqa: PLC0415 - see the imports

    # Two children start while the core's modules import, and `Core` waits for their answers:
    # the store's unseal (the crypto runs in a child, so that the core never imports it), and
    # the sandbox's kernel probe, before any worker can start.
    check_state_dir(config.core.state_dir, config.path)
    unsealing = Unsealing(config.core.private_key, config.core.state_dir / STORE_FILE_NAME)
    try:
        probe = None if config.workers.sandbox == "off" else NamespaceProbe.for_config(config)
        return _serve(config, probe, unsealing)
    finally:
        unsealing.cancel()  # unless the core took its answer


def _serve(config: Config, probe: NamespaceProbe | None, unsealing: Unsealing) -> int:
    from edge.core import Core  # noqa: PLC0415 - see the imports
    from edge.eventloop import choose_event_loop  # noqa: PLC0415 - see the imports
    from edge.hardening import forbid_memory_access  # noqa: PLC0415 - see the imports
    from edge.heap import release_free_heap  # noqa: PLC0415 - see the imports

    # Before any secret is loaded: no core dumps, and its memory is closed to its own user.
    forbid_memory_access()

    event_loop = choose_event_loop(config.core.event_loop)

    async def main() -> None:
        get_logger("core").info("core.event_loop", loop=event_loop.name)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with Core(config, namespace_probe=probe, unsealing=unsealing) as core:
            # What start-up made (modules, config, the store's index) lives as long as the
            # core: out of the collector's sight, a full collection costs microseconds, not
            # the tens of milliseconds it would stall the IPC for.
            gc.freeze()
            # The import-time garbage is free now, but inside the heap: give it back.
            release_free_heap()
            await core.serve_forever(stop)

    event_loop.run(main())
    return 0


def _invoke(config: Config, function_arn: str, payload: str, invocation_type: str) -> int:
    from edge.cli_invoke import invoke_function  # noqa: PLC0415 - see the imports

    if payload:
        try:
            json.loads(payload)
        except ValueError as exc:
            raise UsageError(f"--payload is not valid JSON: {exc}") from None
    result = invoke_function(
        config.core.state_dir, function_arn, payload.encode(), invocation_type=invocation_type
    )
    body = bytes(result.get("Payload") or b"").decode("utf-8", "replace")
    error = result.get("FunctionError") or ""
    if error:
        print(f"edge: error: function {function_arn} failed ({error}): {body}", file=sys.stderr)
        return 1
    if body:
        print(body)
    return 0


def _secrets_list(config: Config, *, as_json: bool) -> int:
    from edge.secrets.store import open_store  # noqa: PLC0415 - see the imports

    contents = open_store(config).load() or StoreContents()
    listing = secrets_listing(contents)
    if as_json:
        print(json.dumps(listing, indent=2))
        return 0
    deployment = listing["Deployment"]
    if deployment:
        print(
            f"Deployment {deployment['DeploymentId']} ({deployment['DeploymentType']}), "
            f"group {deployment['GroupId']} version {deployment['GroupVersionId']}"
        )
    if not listing["Secrets"]:
        print("No secrets in the store.")
        return 0
    rows = [("ResourceId", "Name", "StagingLabel", "VersionId", "ARN")]
    for s in listing["Secrets"]:
        rows.extend(
            (s["ResourceId"], s["Name"], label, vid, s["ARN"])
            for label, vid in s["StagingLabels"].items()
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    return 0


def _secrets_audit(
    config: Config, *, since: str | None, function: str | None, as_json: bool
) -> int:
    from edge.audit import audit_path, matches, parse_since, read_entries, summarize  # noqa: PLC0415 - see the imports

    since_time = parse_since(since) if since else None
    entries = [
        e
        for e in read_entries(audit_path(config.core.state_dir))
        if matches(e, since=since_time, function=function)
    ]
    if as_json:
        for entry in entries:
            print(json.dumps(entry, separators=(",", ":")))
        return 0
    if not entries:
        print("No secret reads recorded" + (" that match." if since or function else "."))
        return 0
    rows = [("First", "Last", "Function", "Secret", "Label", "VersionId", "Outcome", "Count")]
    rows.extend(
        (
            str(e.get("time", "")),
            str(e.get("last", "")),
            str(e.get("function_arn", "")),
            str(e.get("secret_id", "")),
            str(e.get("label", "")),
            str(e.get("version_id", "")),
            str(e.get("outcome", "")) + ("*" if e.get("self_reported") else ""),
            str(e.get("count", "")),
        )
        for e in summarize(entries)
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if any(e.get("self_reported") for e in entries):
        print("* reads a worker served from its cache of answers, as the worker reported them")
    return 0


def secrets_listing(contents: StoreContents) -> dict[str, Any]:
    """What `edge secrets list --json` prints: ids, labels and versions, never a value."""
    dep = contents.deployment
    return {
        "Deployment": None if dep is None else dep.to_plain(),
        "Secrets": [
            {
                "ResourceId": s.resource_id,
                "ARN": s.arn,
                "Name": s.name,
                "StagingLabels": dict(s.labels),
                "Versions": [
                    {
                        "VersionId": v.version_id,
                        "VersionStages": list(v.version_stages),
                        "CreatedDate": datetime.fromtimestamp(v.created_date, UTC).isoformat(),
                        "Type": "SecretString" if v.secret_string is not None else "SecretBinary",
                    }
                    for v in s.versions.values()
                ],
            }
            for s in sorted(contents.secrets.values(), key=lambda s: s.resource_id)
        ],
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
