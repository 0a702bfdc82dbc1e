"""Greengrass V1's Lambda function ARN parser, as `greengrasssdk.Lambda` uses it."""

from __future__ import annotations

_PREFIX_FIELDS = 6  # arn:partition:lambda:region:account:function


class FunctionArnFields:
    """The parts of `arn:aws:lambda:region:account:function:name[:qualifier]`."""

    def __init__(self, function_arn: str) -> None:
        parts = function_arn.split(":")
        if len(parts) < _PREFIX_FIELDS + 1 or parts[0] != "arn" or parts[5] != "function":
            raise ValueError(f"Cannot parse given function ARN: {function_arn!r}")
        self.arn = function_arn
        self.partition = parts[1]
        self.service = parts[2]
        self.region = parts[3]
        self.account_id = parts[4]
        self.name = parts[6]
        self.qualifier = parts[7] if len(parts) > _PREFIX_FIELDS + 1 else ""
        self.unqualified_arn = ":".join(parts[:7])

    @staticmethod
    def build_arn_string(
        region: str, account_id: str, name: str, qualifier: str = "", partition: str = "aws"
    ) -> str:
        """Build a function ARN from its parts."""
        arn = f"arn:{partition}:lambda:{region}:{account_id}:function:{name}"
        return f"{arn}:{qualifier}" if qualifier else arn

    @staticmethod
    def build_function_arn(unqualified_arn: str, qualifier: str | None = None) -> str:
        """Append a qualifier (version or alias) to an unqualified ARN."""
        return f"{unqualified_arn}:{qualifier}" if qualifier else unqualified_arn
