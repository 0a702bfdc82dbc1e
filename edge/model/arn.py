# SPDX-License-Identifier: Apache-2.0
"""Secrets Manager secret ARNs: check the full form and name the secret it points to.

A secret resource references its secret by the *full* ARN that Secrets Manager returns:

    arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-SomeSecret-KUj89s

The last part is the secret's name, a hyphen, and six random characters that Secrets Manager
appends so that a secret deleted and re-created under the same name gets a new ARN. Greengrass
V1 lets a secret be referenced only once per group, and a Lambda function asks for a local secret
by *name* (or by ARN), so we need the name without the suffix; partial ARNs (without the suffix)
are not accepted, because the console and API never produce them for a secret resource.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge.model.fields import quoted

#: Secrets Manager's limit on a secret's name (CreateSecret: "Maximum length of 512").
MAX_SECRET_NAME_LENGTH = 512

#: The shape the error messages describe.
_FORM = "arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX"

# re.ASCII everywhere: without it `[0-9]`-like classes stay ASCII but `\d`/`\w` would accept
# other scripts' digits and letters, which AWS never issues.
#
# Partitions as AWS's own ARN patterns write them (`arn:aws(-[a-z]+)*:`): aws, aws-cn,
# aws-us-gov, aws-iso, aws-iso-b, ... New partitions keep this shape, so we don't list them.
_PARTITION = re.compile(r"aws(?:-[a-z]+)*", re.ASCII)
# Regions as AWS's patterns write them (`[a-z]{2}(-[a-z]+)+-\d`): us-west-2, us-gov-east-1,
# cn-north-1, us-isob-east-1. Two digits allowed in case a region ever needs them.
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}", re.ASCII)
_ACCOUNT = re.compile(r"[0-9]{12}", re.ASCII)
# The characters Secrets Manager allows in a secret name ("/_+=.@-" and alphanumerics).
_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]+", re.ASCII)
# Name, hyphen, six random alphanumerics. The name is greedy, so for "a-b-XXXXXX" it is "a-b".
_NAME_AND_SUFFIX = re.compile(r"(?P<name>.+)-(?P<suffix>[A-Za-z0-9]{6})", re.ASCII | re.DOTALL)


@dataclass(frozen=True, slots=True)
class SecretArn:
    """A parsed secret ARN; `name` is the secret's name without the 6-character suffix."""

    partition: str
    region: str
    account_id: str
    name: str
    #: The full ARN, exactly as given.
    arn: str

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes two ARNs name the same secret: partition, region, account and name.

        Two texts with the same identity but different suffixes are the same secret name in
        the same account and region; Secrets Manager holds only one such secret at a time,
        so a group that references both references one secret twice.
        """
        return (self.partition, self.region, self.account_id, self.name)


def parse_secret_arn(text: str) -> SecretArn:
    """Parse the full ARN of a Secrets Manager secret.

    Args:
        text: The ARN, with the 6-character suffix that Secrets Manager appends to the name.

    Returns:
        The ARN's parts, with the secret's name split from the suffix.

    Raises:
        ValueError: The text is not a full secret ARN. The message quotes it (truncated) and
            says which part is wrong.
    """
    if not isinstance(text, str):
        msg = f"a secret ARN must be a string, not {type(text).__name__}"
        raise ValueError(msg)  # noqa: TRY004 - callers expect ValueError for any bad ARN
    shown = quoted(text)
    if not text:
        raise _invalid(shown, f"is empty; expected {_FORM}")
    # Checked first so that a stray newline or space gets a message that says so, instead of
    # "region is malformed" from whichever part it happened to land in.
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise _invalid(shown, "contains whitespace or control characters")
    # A secret name can't contain ":", so a well-formed ARN has exactly seven parts.
    parts = text.split(":")
    if len(parts) != 7 or parts[0] != "arn":  # noqa: PLR2004 - the seven parts of an ARN
        msg = f"{shown} is not a secret ARN; expected {_FORM}"
        raise ValueError(msg)
    _, partition, service, region, account_id, resource_type, resource = parts
    problem = _part_problem(partition, service, region, account_id, resource_type)
    if problem is not None:
        raise _invalid(shown, problem)
    match = _NAME_AND_SUFFIX.fullmatch(resource)
    if match is None:
        raise _invalid(
            shown,
            f"must end with the secret's name, a hyphen and the 6 characters Secrets Manager "
            f"appends ({_FORM}); partial ARNs are not accepted",
        )
    name = match["name"]
    problem = _name_problem(name)
    if problem is not None:
        raise _invalid(shown, problem)
    return SecretArn(partition=partition, region=region, account_id=account_id, name=name, arn=text)


def _invalid(shown: str, problem: str) -> ValueError:
    """Build the error for a malformed ARN (already quoted as `shown`); the caller raises it."""
    return ValueError(f"secret ARN {shown} {problem}")


def _part_problem(
    partition: str, service: str, region: str, account_id: str, resource_type: str
) -> str | None:
    """Describe what is wrong with the fixed parts of an ARN, or return None if nothing is."""
    if _PARTITION.fullmatch(partition) is None:
        return (
            f"has partition {quoted(partition)}, which is not an AWS partition (aws, aws-cn, ...)"
        )
    if service != "secretsmanager":
        return f"is for service {quoted(service)}, not secretsmanager"
    if _REGION.fullmatch(region) is None:
        return f"has region {quoted(region)}, which is not a region name such as us-west-2"
    if _ACCOUNT.fullmatch(account_id) is None:
        return f"has account {quoted(account_id)}; an AWS account id is exactly 12 digits"
    if resource_type != "secret":
        return f'has resource type {quoted(resource_type)}, not "secret"'
    return None


def _name_problem(name: str) -> str | None:
    """Describe what is wrong with a secret's name, or return None if nothing is."""
    if len(name) > MAX_SECRET_NAME_LENGTH:
        return f"has a secret name longer than {MAX_SECRET_NAME_LENGTH} characters"
    if _NAME.fullmatch(name) is None:
        return (
            f"has secret name {quoted(name)}; a name may only contain letters, digits and "
            f"/ _ + = . @ -"
        )
    return None
