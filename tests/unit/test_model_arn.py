"""Tests for edge.model.arn: parsing full Secrets Manager secret ARNs."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.model import SecretArn, parse_secret_arn
from edge.model.fields import MAX_QUOTED_LENGTH

REFERENCE_ARN = "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-SomeSecret-KUj89s"

PARTITIONS = ("aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-f")
REGIONS = ("us-west-2", "eu-central-1", "cn-north-1", "us-gov-west-1", "us-isob-east-1")

partitions = st.sampled_from(PARTITIONS)
regions = st.sampled_from(REGIONS)
accounts = st.from_regex(r"[0-9]{12}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9/_+=.@-]{1,60}", fullmatch=True)
suffixes = st.from_regex(r"[A-Za-z0-9]{6}", fullmatch=True)


def make_arn(
    *,
    partition: str = "aws",
    region: str = "us-west-2",
    account: str = "123456789012",
    name: str = "app/token",
    suffix: str = "AbC123",
) -> str:
    return f"arn:{partition}:secretsmanager:{region}:{account}:secret:{name}-{suffix}"


def test_reference_arn() -> None:
    """The ARN from the V1 documentation parses into its parts, the name without the suffix."""
    parsed = parse_secret_arn(REFERENCE_ARN)
    assert parsed == SecretArn(
        partition="aws",
        region="us-west-2",
        account_id="123456789012",
        name="greengrass-SomeSecret",
        arn=REFERENCE_ARN,
    )


@pytest.mark.parametrize("partition", PARTITIONS)
def test_partitions(partition: str) -> None:
    """Every AWS partition is accepted, including the GovCloud, China and ISO ones."""
    assert parse_secret_arn(make_arn(partition=partition)).partition == partition


@pytest.mark.parametrize("region", REGIONS)
def test_regions(region: str) -> None:
    """Region names of every partition's shape are accepted."""
    assert parse_secret_arn(make_arn(region=region)).region == region


def test_name_with_every_allowed_character() -> None:
    """Names may contain letters, digits and / _ + = . @ -, and keep inner hyphens."""
    name = "team/app_1+x=y.z@corp-prod-db"
    assert parse_secret_arn(make_arn(name=name)).name == name


def test_name_split_takes_only_the_last_six_characters() -> None:
    """The suffix is the last hyphen and six alphanumerics; earlier hyphens stay in the name."""
    assert parse_secret_arn(make_arn(name="a-b-c", suffix="zzzzzz")).name == "a-b-c"


def test_name_of_maximum_length() -> None:
    """A 512-character name, Secrets Manager's limit, is accepted."""
    assert parse_secret_arn(make_arn(name="n" * 512)).name == "n" * 512


def test_identity_ignores_the_suffix() -> None:
    """Two ARNs that differ only in the suffix have the same identity but keep their own text."""
    first = parse_secret_arn(make_arn(suffix="AAAAAA"))
    second = parse_secret_arn(make_arn(suffix="BBBBBB"))
    assert first.identity == second.identity == ("aws", "us-west-2", "123456789012", "app/token")
    assert first.arn != second.arn


def test_identity_differs_by_account_region_partition_and_name() -> None:
    """Changing any of partition, region, account or name changes the identity."""
    base = parse_secret_arn(make_arn()).identity
    for other in (
        make_arn(partition="aws-cn"),
        make_arn(region="eu-west-1"),
        make_arn(account="210987654321"),
        make_arn(name="app/other"),
    ):
        assert parse_secret_arn(other).identity != base


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        (" " + REFERENCE_ARN, "whitespace or control characters"),
        (REFERENCE_ARN + "\n", "whitespace or control characters"),
        (REFERENCE_ARN.replace("greengrass-", "green grass-"), "whitespace or control"),
        (REFERENCE_ARN.replace("greengrass", "green\tgrass"), "whitespace or control"),
        (REFERENCE_ARN.replace("greengrass", "green\x00grass"), "whitespace or control"),
        (REFERENCE_ARN.replace("greengrass", "green\u200bgrass"), "whitespace or control"),
        ("greengrass-SomeSecret-KUj89s", "is not a secret ARN"),
        ("urn:aws:secretsmanager:us-west-2:123456789012:secret:x-KUj89s", "is not a secret ARN"),
        (REFERENCE_ARN + ":extra", "is not a secret ARN"),
        ("arn:aws:secretsmanager:us-west-2:123456789012:secret", "is not a secret ARN"),
        (make_arn(partition=""), "not an AWS partition"),
        (make_arn(partition="AWS"), "not an AWS partition"),
        (make_arn(partition="aws-"), "not an AWS partition"),
        (make_arn(partition="azure"), "not an AWS partition"),
        (REFERENCE_ARN.replace("secretsmanager", "ssm"), 'service "ssm"'),
        (REFERENCE_ARN.replace("secretsmanager", ""), 'service ""'),
        (make_arn(region=""), "not a region name"),
        (make_arn(region="uswest2"), "not a region name"),
        (make_arn(region="US-WEST-2"), "not a region name"),
        (make_arn(account=""), "exactly 12 digits"),
        (make_arn(account="12345678901"), "exactly 12 digits"),
        (make_arn(account="1234567890123"), "exactly 12 digits"),
        (make_arn(account="12345678901x"), "exactly 12 digits"),
        (make_arn(account="١٢٣٤٥٦٧٨٩٠١٢"), "exactly 12 digits"),
        (REFERENCE_ARN.replace(":secret:", ":secrets:"), 'resource type "secrets"'),
        (REFERENCE_ARN.replace(":secret:", "::"), 'resource type ""'),
        (REFERENCE_ARN.removesuffix("-KUj89s"), "partial ARNs are not accepted"),
        (make_arn(suffix="AbC12"), "partial ARNs are not accepted"),
        (make_arn(suffix="AbC12_"), "partial ARNs are not accepted"),
        (make_arn(name=""), "partial ARNs are not accepted"),
        (make_arn(name="a#b"), "may only contain letters"),
        (make_arn(name="café"), "may only contain letters"),
        (make_arn(name="a*b"), "may only contain letters"),
        (make_arn(name="n" * 513), "longer than 512"),
    ],
)
def test_malformed_arns_are_rejected(text: str, fragment: str) -> None:
    """Each malformed ARN raises ValueError saying which part is wrong."""
    with pytest.raises(ValueError, match="secret ARN") as info:
        parse_secret_arn(text)
    assert fragment in str(info.value)


def test_non_string_is_rejected_with_value_error() -> None:
    """A non-string raises ValueError, not TypeError, so callers handle one exception."""
    with pytest.raises(ValueError, match="must be a string"):
        parse_secret_arn(12345)  # type: ignore[arg-type]


def test_message_quotes_a_truncated_excerpt() -> None:
    """A long malformed ARN is quoted only in part, so errors never carry a whole document."""
    text = make_arn(name="x" * 2000 + "#")
    with pytest.raises(ValueError, match="secret ARN") as info:
        parse_secret_arn(text)
    assert text not in str(info.value)
    assert len(str(info.value)) < 4 * MAX_QUOTED_LENGTH


@given(partition=partitions, region=regions, account=accounts, name=names, suffix=suffixes)
def test_generated_arns_round_trip(
    partition: str, region: str, account: str, name: str, suffix: str
) -> None:
    """Any well-formed ARN parses back into the parts it was built from."""
    text = make_arn(partition=partition, region=region, account=account, name=name, suffix=suffix)
    parsed = parse_secret_arn(text)
    assert (parsed.partition, parsed.region, parsed.account_id, parsed.name, parsed.arn) == (
        partition,
        region,
        account,
        name,
        text,
    )


@given(
    name=names,
    suffix=suffixes,
    position=st.integers(min_value=0),
    junk=st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x7f", "\u00a0", "\u2028"]),
)
def test_inserting_whitespace_or_control_anywhere_is_rejected(
    name: str, suffix: str, position: int, junk: str
) -> None:
    """Whitespace or a control character at any position of a valid ARN makes it invalid."""
    text = make_arn(name=name, suffix=suffix)
    cut = position % (len(text) + 1)
    with pytest.raises(ValueError, match="whitespace or control characters"):
        parse_secret_arn(text[:cut] + junk + text[cut:])


@settings(max_examples=2000)
@given(st.text())
def test_arbitrary_text_raises_only_value_error(text: str) -> None:
    """Arbitrary text either parses or raises ValueError with a bounded message."""
    try:
        parsed = parse_secret_arn(text)
    except ValueError as exc:
        message = str(exc)
    else:
        assert parsed.arn == text
        return
    assert len(message) < 4 * MAX_QUOTED_LENGTH + 200


@settings(max_examples=1000)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["arn", "aws", "secretsmanager", "us-west-2", "123456789012"]),
            st.sampled_from(["secret", "name-AbC123", "", "aws-cn"]),
            st.text(max_size=8),
        ),
        min_size=1,
        max_size=9,
    )
)
def test_arn_shaped_text_raises_only_value_error(parts: list[str]) -> None:
    """Colon-joined ARN-like parts either parse or raise ValueError, never anything else."""
    text = ":".join(parts)
    with contextlib.suppress(ValueError):
        assert parse_secret_arn(text).arn == text
