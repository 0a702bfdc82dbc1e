# SPDX-License-Identifier: Apache-2.0
"""One exception tree for everything a user can cause; messages say how to fix it."""

from __future__ import annotations


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


# --- fetching from Secrets Manager ---------------------------------------------------------


class SecretFetchError(EdgeError):
    """Base for failures to fetch a secret version from Secrets Manager."""


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

    def __init__(self, arn: str, detail: str) -> None:
        self.arn = arn
        self.detail = detail
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
