# SPDX-License-Identifier: Apache-2.0
"""What masking every form of every secret costs: `SecretRedactor.mask` per line, and `update`.

    .venv/bin/python bench/masking.py [--secrets 100] [--repeat 9] [--update-values 1000,5000]

The redactor is fed `--secrets` values, a third each: passwords (32 characters), PEM private
keys (EC P-256 and, one in five, RSA 2048) and JSON documents (a database credential, every
second one with a PEM key as a field). Two redactors hold them:

  (new)       `SecretRedactor()`: every form `edge.redaction.masked_forms` gives (the value, its
              lines, its JSON strings; escaped, repr'd and base64'd);
  (baseline)  `SecretRedactor(forms=todays_forms)`: whole values only (text as is, binary
              as base64 and UTF-8), as a redactor that matches whole values masks them.

Each masks 100-character lines of four kinds, 2,000 lines per kind, the best of `--repeat`
runs, the two redactors interleaved: log text holding no secret (most lines), a line holding
one password, a line holding one PEM body line (only the new redactor masks it), and 100
dashes (the worst case for the index: every PEM form starts with `-----`, so every position
finds candidates, told apart by `WIDE_KEY_LENGTH` characters). Reported: ns per line, ns per
character, and new / baseline. Then `update` (which the core runs at every store change) with
`--update-values` values of the same mix, in milliseconds: on a fresh redactor (a start, or
a deployment of all-new values) and on a warm one with one value rotated (a refresh); and the
forms indexed with the characters they hold (MB, strings' bodies only).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.redaction import SecretRedactor, masked_forms

LINE_LENGTH = 100
LINES_PER_KIND = 2000
#: One RSA key in this many PEMs (RSA generation is slow; the rest are EC).
RSA_EVERY = 5


def todays_forms(value: str | bytes) -> set[str]:
    """The baseline's forms: the whole value only."""
    if isinstance(value, str):
        return {value}
    forms = {base64.b64encode(value).decode("ascii")}
    with contextlib.suppress(UnicodeDecodeError):
        forms.add(value.decode("utf-8"))
    return forms


def pem(index: int) -> str:
    """A fresh PKCS#8 PEM private key: RSA one time in RSA_EVERY, else EC P-256."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if index % RSA_EVERY == 0:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def values(count: int) -> list[str]:
    """`count` secret values: passwords, PEM keys and JSON documents in turn."""
    out: list[str] = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            out.append(secrets.token_urlsafe(24))
        elif kind == 1:
            out.append(pem(i))
        else:
            doc: dict[str, object] = {
                "username": f"app-{i}",
                "password": secrets.token_urlsafe(18),
                "host": f"db-{i}.example.internal",
                "port": 5432,
            }
            if i % 2:
                doc["tls_key"] = pem(i)
            out.append(json.dumps(doc, indent=2))
    return out


def lines(held: list[str]) -> dict[str, list[str]]:
    """LINES_PER_KIND lines of LINE_LENGTH characters of each kind."""
    words = [
        "worker",
        "output",
        "line",
        "with",
        "an",
        "ordinary",
        "message",
        "about",
        "request",
        "processing",
    ]
    plain = []
    for i in range(LINES_PER_KIND):
        text = " ".join(words[(i + j) % len(words)] for j in range(20))
        plain.append(f"{i:05d} {text}"[:LINE_LENGTH])
    password = next(v for v in held if not v.startswith(("-", "{")))
    pem_line = next(v for v in held if v.startswith("-----")).splitlines()[1]

    def around(value: str) -> list[str]:
        pad = LINE_LENGTH - len(value) - 8
        return [f"{i:05d} x {value} {'y' * pad}"[:LINE_LENGTH] for i in range(LINES_PER_KIND)]

    return {
        "no secret": plain,
        "one password": around(password),
        "one PEM line": around(pem_line),
        "100 dashes": ["-" * LINE_LENGTH] * LINES_PER_KIND,
    }


def time_masks(
    redactors: tuple[SecretRedactor, SecretRedactor], batch: list[str], repeat: int
) -> tuple[float, float]:
    """Best ns per line of each redactor masking `batch`, runs interleaved `repeat` times."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for n, redactor in enumerate(redactors):
            mask = redactor.mask
            start = time.perf_counter_ns()
            for line in batch:
                mask(line)
            best[n] = min(best[n], (time.perf_counter_ns() - start) / len(batch))
    return best[0], best[1]


def time_update(
    forms: Callable[[str | bytes], set[str]], held: list[str], repeat: int
) -> tuple[float, float, int, int]:
    """Best ms of `update(held)` on a fresh redactor and, warm, with one value rotated.

    Also returns the forms indexed and the characters in them.
    """
    first = rotated = float("inf")
    for n in range(repeat):
        redactor = SecretRedactor(forms=forms)
        start = time.perf_counter()
        redactor.update(held)
        first = min(first, (time.perf_counter() - start) * 1000)
        changed = [*held[:-1], f"rotated-{n}-{secrets.token_urlsafe(24)}"]
        start = time.perf_counter()
        redactor.update(changed)
        rotated = min(rotated, (time.perf_counter() - start) * 1000)
    indexed = {f for value in held for f in forms(value)}
    return first, rotated, len(indexed), sum(len(f) for f in indexed)


def main() -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--secrets", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--update-values", default="1000,5000")
    args = parser.parse_args()

    held = values(args.secrets)
    new, baseline = SecretRedactor(), SecretRedactor(forms=todays_forms)
    new.update(held)
    baseline.update(held)
    print(f"mask(): {args.secrets} secrets, {LINE_LENGTH}-character lines, best of {args.repeat}")
    print(f"{'line':<14}{'new ns':>10}{'base ns':>10}{'new ns/ch':>11}{'new/base':>10}  masked")
    for kind, batch in lines(held).items():
        ns_new, ns_base = time_masks((new, baseline), batch, args.repeat)
        masked = "new" if new.mask(batch[0]) != batch[0] else "no"
        if baseline.mask(batch[0]) != batch[0]:
            masked += "+base"
        print(
            f"{kind:<14}{ns_new:>10.0f}{ns_base:>10.0f}{ns_new / LINE_LENGTH:>11.1f}"
            f"{ns_new / ns_base:>10.2f}  {masked}"
        )

    print(f"\nupdate(): best of {args.repeat}; first: a fresh redactor, rotated: one value changed")
    print(
        f"{'values':>7}{'first ms':>10}{'base ms':>10}{'rotated ms':>12}{'base ms':>10}"
        f"{'new forms':>11}{'base forms':>12}{'new MB':>8}"
    )
    for count in (int(c) for c in args.update_values.split(",")):
        mixed = values(count)
        first, rotated, forms_new, size_new = time_update(masked_forms, mixed, args.repeat)
        first_base, rotated_base, forms_base, _ = time_update(todays_forms, mixed, args.repeat)
        print(
            f"{count:>7}{first:>10.1f}{first_base:>10.1f}{rotated:>12.1f}{rotated_base:>10.1f}"
            f"{forms_new:>11}{forms_base:>12}{size_new / 1e6:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
