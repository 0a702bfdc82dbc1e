# SPDX-License-Identifier: Apache-2.0
"""The errors a person meets, in one tree rooted in `EdgeError`; each message says what to do.

Where an exception lives:

- **Here**, every error that reaches a person: the CLI prints it, a deployment's status carries
  it (its class name is the status's `DetailedErrorCode`, see docs/contracts.md), or the core
  logs it as the reason it refused something. These names are part of the contract, so they
  derive from `EdgeError`, live in this module grouped by concern (the control plane's in
  edge/cloud/errors.py), and build their message from typed arguments that stay on the
  instance. A family base (`SecretFetchError`,
  `SignatureError`, `StoreError`) is kept where a caller handles the whole family.
- **Beside the module that raises it**, every internal exception: one that passes between the
  parts of edge and is caught, and translated or answered, before anything reaches a person
  (`WorkerGoneError` in edge/workers/process.py, `ServiceError` in edge/workers/services.py,
  `ConfinementError` in edge/child/privileges.py, `ApiError` in edge/cloud/serve/errors.py).
  These derive from `Exception` or a builtin, never from `EdgeError`, so none is ever shown as
  if it were the user's to fix; a status names one only as `InternalError`.

The demo (`edge/demo/`) and the shared fixtures (`edge/fixtures/`) are programs built on edge,
not parts of it: their errors stay with them.
"""

from __future__ import annotations

# Only for annotations: every worker imports this module, and pathlib would cost it memory, as
# would `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


class EdgeError(Exception):
    """Root of every error `edge` raises on purpose; the CLI prints these without a traceback."""


# --- configuration ---------------------------------------------------------------------------


class ConfigError(EdgeError):
    """The TOML configuration is missing, unreadable or invalid."""

    def __init__(self, path: str, problem: str, *, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class ConfigPermissionsError(ConfigError):
    """The config file can be changed by another user, or read by one while it holds a PIN."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.fix = fix
        super().__init__(path, f"{problem}; run `{fix}` and start again")


class UsageError(EdgeError):
    """A command-line argument is wrong in a way argparse can't see (bad JSON, say)."""


class MigrationError(EdgeError):
    """A Greengrass V1 file can't be converted: missing, malformed, or naming what edge lacks."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# --- the group model -------------------------------------------------------------------------


class DeploymentInvalidError(EdgeError):
    """A deployment document or group definition failed validation.

    `deployment_id` is set when the document carried one, so the core can report a `Failure`
    status for it; otherwise the core can only log the rejection.
    """

    def __init__(self, problem: str, *, deployment_id: str | None = None) -> None:
        self.problem = problem
        self.deployment_id = deployment_id
        super().__init__(f"invalid deployment document: {problem}")


# --- keys and the local store ----------------------------------------------------------------


class CoreKeyError(EdgeError):
    """The core's private key is missing, unreadable or of an unsupported kind."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"core key {path}: {problem}")


class StoreError(EdgeError):
    """Base for problems with the encrypted local secret store."""


class StoreCorruptError(StoreError):
    """The store file can't be decrypted: truncated, tampered with, or sealed with another key."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"secret store {path} can't be read: {problem}. It was left untouched. Restore the "
            f"core key it was written with, or move the file aside to start with an empty store "
            f"and redeploy the group."
        )


class StoreWriteError(StoreError):
    """A new store could not be written; the previous one is still in place."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"could not write secret store {path}: {problem}; the previous store is unchanged"
        )


class StoreSymlinkError(StoreError):
    """The store file is a symbolic link; the core reads and writes only the file itself."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"secret store {path} is a symbolic link, which the core never follows (whoever "
            f"placed it could make the core read a file of their choosing); replace the link "
            f"with the store file itself (`mv` the real file to {path}), or point [core] "
            f"state_dir at the directory that holds it, and start again"
        )


class InsecurePermissionsError(EdgeError):
    """A file or directory holding secrets is readable or writable by others."""

    def __init__(self, path: str, mode: int, wanted: int) -> None:
        self.path = path
        self.mode = mode
        self.wanted = wanted
        super().__init__(
            f"{path} has mode {mode:04o}, which lets other users reach secrets; "
            f"run `chmod {wanted:04o} {path}` and start again"
        )


class StateDirMissingError(EdgeError):
    """The state directory does not exist yet."""

    def __init__(self, path: Path, config_path: Path) -> None:
        self.path = path
        super().__init__(
            f"state directory {path} does not exist; run `edge init --config {config_path}`"
        )


class SandboxUnavailableError(EdgeError):
    """`[workers] sandbox = "required"`, and this kernel can't confine workers."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(
            f"workers can't be confined: {problem}; {fix}, "
            'or set [workers] sandbox = "auto" to run them with the walls this kernel has'
        )


class WorkerUserError(EdgeError):
    """The user a function's worker would run as can't start it: fails the deployment."""

    def __init__(self, function_arn: str, user: str, problem: str) -> None:
        self.function_arn = function_arn
        self.user = user
        self.problem = problem
        super().__init__(f"function {function_arn} runs as {user}, who {problem}")


# --- function code ---------------------------------------------------------------------------


class CodeFetchError(EdgeError):
    """A function's code could not be fetched, verified or unpacked."""

    def __init__(self, function_arn: str, problem: str) -> None:
        self.function_arn = function_arn
        self.problem = problem
        super().__init__(f"code of function {function_arn}: {problem}")


class LocalCodeRefusedError(CodeFetchError):
    """`file://` code names a path outside `[workers] local_code_dirs`, or a hidden one."""


# --- fetching from Secrets Manager ---------------------------------------------------------


class SecretFetchError(EdgeError):
    """Base for failures to fetch a secret version from Secrets Manager."""


class IotCredentialsError(SecretFetchError):
    """The AWS IoT credentials provider gave no credentials for the core's certificate."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"AWS credentials from the IoT credentials provider: {problem}")


class SecretNotFoundError(SecretFetchError):
    """The secret named by a resource does not exist (or was deleted) in Secrets Manager."""

    def __init__(self, arn: str) -> None:
        self.arn = arn
        super().__init__(f"the secret with ARN {arn} can't be found in Secrets Manager")


class StagingLabelNotFoundError(SecretFetchError):
    """The secret exists but no version carries the requested staging label."""

    def __init__(self, arn: str, label: str) -> None:
        self.arn = arn
        self.label = label
        super().__init__(
            f"the secret with ARN {arn} has no version with staging label {label!r} in "
            f"Secrets Manager; attach the label to a version or remove it from "
            f"AdditionalStagingLabelsToDownload"
        )


class SecretAccessDeniedError(SecretFetchError):
    """The core's AWS credentials may not read the secret."""

    def __init__(self, arn: str, detail: str) -> None:
        self.arn = arn
        self.detail = detail
        super().__init__(
            f"access to the secret with ARN {arn} was denied by Secrets Manager ({detail}); "
            f"allow secretsmanager:GetSecretValue on it for the core's credentials"
        )


class SecretServiceError(SecretFetchError):
    """Secrets Manager failed, or could not be reached, after every retry."""

    def __init__(self, arn: str, detail: str, *, error_code: str | None = None) -> None:
        self.arn = arn
        self.detail = detail
        #: Secrets Manager's error code, where it answered with one.
        self.error_code = error_code
        super().__init__(
            f"could not fetch the secret with ARN {arn} from Secrets Manager: {detail}"
        )


class FetchDeadlineError(SecretFetchError):
    """Fetching all of a deployment's secrets took longer than the configured deadline."""

    def __init__(self, deadline_seconds: float, done: int, total: int) -> None:
        self.deadline_seconds = deadline_seconds
        self.done = done
        self.total = total
        super().__init__(
            f"fetching secrets did not finish within {deadline_seconds:g} s "
            f"({done} of {total} versions fetched); check the network to Secrets Manager "
            f"or raise [fetch] deadline_seconds"
        )


# --- the worker IPC ---------------------------------------------------------------------------


class ProtocolError(EdgeError):
    """Base for violations of the IPC frame protocol; raise a subclass, never this class.

    The split follows h11: `RemoteProtocolError` means the peer sent something we can't accept
    (its bug, or an attack), `LocalProtocolError` means this process tried to send something the
    protocol forbids (our bug). Callers treat the first as "close that connection, log once and
    keep serving" and the second as a defect.
    """

    def __init__(self, problem: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError(
                "ProtocolError is abstract: raise LocalProtocolError or RemoteProtocolError"
            )
        self.problem = problem
        super().__init__(problem)


class LocalProtocolError(ProtocolError):
    """This side tried to send an event the protocol does not allow in its current state."""


class FrameTooLargeError(LocalProtocolError):
    """An event this side tried to send would not fit in one frame."""

    def __init__(self, frame_type: str, size: int, limit: int) -> None:
        self.frame_type = frame_type
        self.size = size
        self.limit = limit
        super().__init__(f"a {frame_type} frame of {size} bytes exceeds the {limit}-byte limit")


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame, or a frame not allowed in this state."""


class IpcServerError(EdgeError):
    """The core's IPC socket can't be set up safely (its directory, path or an old socket)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"IPC socket {path}: {problem}")


class IpcConnectionError(EdgeError):
    """The core could not be reached, or the connection to it broke during a call."""

    def __init__(self, socket_path: str, problem: str) -> None:
        self.socket_path = socket_path
        self.problem = problem
        super().__init__(f"can't talk to the core at {socket_path}: {problem}")


class IpcCallError(EdgeError):
    """The core answered a call with an error, in Greengrass V1's `{Status, Message}` form."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class IpcTimeoutError(IpcCallError):
    """No answer came within the call's timeout (status 408, as V1's IPC reported it)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(408, f"the core did not answer within {timeout:g} s")


class CoreNotRunningError(EdgeError):
    """`edge invoke` found no running core for this config."""

    def __init__(self, state_dir: Path, detail: str) -> None:
        self.state_dir = state_dir
        super().__init__(
            f"no running core found for state directory {state_dir} ({detail}); "
            f"start it with `edge run --config ...`"
        )


class CoreUnreachableError(EdgeError):
    """This user may not read the core's operator token, so may not ask the core anything.

    Distinct from `CoreNotRunningError`: the core may well be running; this user can't tell.
    """

    def __init__(self, state_dir: Path, uid: int) -> None:
        self.state_dir = state_dir
        super().__init__(
            f"this user (uid {uid}) may not read the operator token of the core of state "
            f"directory {state_dir}, so it can't ask the core (nor tell whether it runs); run "
            f"the command as the core's user or as root"
        )


class InvokeRefusedError(EdgeError):
    """The core refused the invocation (unknown function, bad arguments)."""

    def __init__(self, function_arn: str, status: int, message: str) -> None:
        self.function_arn = function_arn
        self.status = status
        super().__init__(f"the core refused to invoke {function_arn} ({status}): {message}")


# --- signed deployments ----------------------------------------------------------------------


class SignatureError(EdgeError):
    """Base for deployment documents refused before parsing: their origin can't be trusted.

    Nothing in such a document is believed, not even its DeploymentId, so the core only logs
    these; see `edge.signing.open_envelope`.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"deployment rejected: {problem}")


class EnvelopeMalformedError(SignatureError):
    """The payload claims to be a signed envelope but breaks the envelope format."""


class UnsignedDeploymentError(SignatureError):
    """An unsigned document reached a core that accepts only signed ones."""

    def __init__(self) -> None:
        super().__init__(
            "the document is not signed; deploy with `edge cloud create-deployment`, or set "
            "[deployments] allow_unsigned = true on a development core"
        )


class UntrustedKeyError(SignatureError):
    """The envelope is signed with a key that is not among the core's trusted keys."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(
            f"the document is signed with key {key_id}, which is not in [deployments] trusted_keys"
        )


class BadSignatureError(SignatureError):
    """The signature does not verify: the document was altered or forged."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(
            f"the signature does not verify against trusted key {key_id}; the document was "
            f"altered or forged"
        )


class SignatureCheckError(SignatureError):
    """The signature could not be checked at all (the crypto process failed): refused too."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(
            f"its signature could not be checked ({why}); nothing in it was applied, deploy it "
            f"again"
        )


class WrongThingError(SignatureError):
    """The envelope was signed for another core."""

    def __init__(self, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"the document was signed for thing {got!r}, not for this core")


class StaleDeploymentError(EdgeError):
    """A signed document is older than the deployment the core's store was built from (replay)."""

    def __init__(self, deployment_id: str, created_at: str, applied_created_at: str) -> None:
        self.deployment_id = deployment_id
        self.created_at = created_at
        self.applied_created_at = applied_created_at
        super().__init__(
            f"deployment {deployment_id} was created at {created_at}, before the deployment "
            f"this core applied last ({applied_created_at}); an old document is never applied "
            f"again: create a new deployment"
        )


class SameTimeDeploymentError(StaleDeploymentError):
    """A signed document claims the applied deployment's CreatedAt under another DeploymentId.

    The control plane gives every deployment its own creation time, so a second id at the same
    instant is a document built to pass the freshness check, not a newer deployment.
    """

    def __init__(self, deployment_id: str, created_at: str, applied_id: str) -> None:
        self.applied_id = applied_id
        EdgeError.__init__(
            self,
            f"deployment {deployment_id} was created at {created_at}, the same instant as "
            f"deployment {applied_id}, which this core applied last; only a deployment created "
            f"later is applied: create a new deployment",
        )
        self.deployment_id = deployment_id
        self.created_at = created_at
        self.applied_created_at = created_at


class SigningKeyError(EdgeError):
    """A signing or trusted public key file is missing, unreadable or not an Ed25519 key."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"signing key {path}: {problem}")
