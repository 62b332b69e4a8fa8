"""Single-byte mutation of real TDX and SGX quotes (and of one sample's
collateral): no changed byte is ever accepted, and every refusal is
MalformedEvidence or VerificationFailed, never another exception.

Coverage. For each of the ten real quotes, every byte (XOR 0x01) of
everything but the certification data's PEM text: header and body (signed
by the attestation key), the signature, the attestation key and QE
authentication data (bound by the QE report data), the QE report and its
signature (signed by the PCK), and every length and type field; XOR 0x80 and
0xFF on every seventh byte of that. The PEM text (about 3.7 KB, identical CA
and root certificates in most quotes) is sampled on every 13th byte per
quote, and swept completely, byte by byte, for one quote. Zero padding after
the quote is sampled too: made non-zero it is refused (bytes after the
quote are not accepted unless the caller opts in). One sample's TCB info and
QE identity bodies are swept byte by byte.

The oracle is the full verification at the sample's verify_at when the
sample verifies, else the quote-only checks (two samples fail on their TCB
level by design; one SGX sample has no collateral).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import timedelta

import pytest

from evidence_support import flip, mutation_outcomes
from intel_support import Sample, sample, samples
from stockade.evidence.intel.abi import Quote
from stockade.evidence.intel.verify import check_quote, verify_quote
from stockade.evidence.pki import load_der

pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")

Oracle = Callable[[bytes], object]


def oracle(s: Sample) -> Oracle:
    if s.has_collateral and not s.expect_not_supported:
        return lambda q: verify_quote(q, s.collateral, s.verify_at, check_revocation=s.has_crls)
    if s.has_collateral:
        at = s.verify_at
    else:
        at = load_der(Quote.from_bytes(s.quote).pck_chain[0], "pck").not_valid_before_utc + timedelta(days=1)
    return lambda q: check_quote(q, at, allow_trailing=s.trailing_nonzero)


def run(
    check: Oracle, base: bytes, positions: Iterable[int], masks: tuple[int, ...]
) -> tuple[Counter[str], list[str]]:
    mutants = ((f"{pos}^0x{mask:02x}", flip(base, pos, mask)) for pos in positions for mask in masks)
    return mutation_outcomes(check, mutants)


def regions(s: Sample) -> tuple[range, range, range]:
    """(every byte before the PEM text, the PEM text, the trailing bytes)."""
    q = Quote.from_bytes(s.quote, allow_trailing=s.trailing_nonzero)
    end = len(q.quote_bytes)
    pem_start = s.quote.index(b"-----BEGIN CERTIFICATE-----")
    pem_end = s.quote.rindex(b"-----END CERTIFICATE-----\n") + len(b"-----END CERTIFICATE-----\n")
    assert pem_end in (end, end - 1)  # optionally followed by the QE's NUL
    return range(0, pem_start), range(pem_start, end), range(end, len(s.quote))


ALL = samples()


@pytest.mark.parametrize("s", ALL, ids=[f"{s.tee}/{s.name}" for s in ALL])
def test_every_signed_byte_change_is_refused(s: Sample) -> None:
    check = oracle(s)
    check(s.quote)  # the unmodified quote passes (and warms the caches)
    signed, pem, trailing = regions(s)
    start = time.perf_counter()
    outcomes, problems = run(check, s.quote, signed, (0x01,))
    more, more_problems = run(check, s.quote, signed[::7], (0x80, 0xFF))
    pem_outcomes, pem_problems = run(check, s.quote, pem[::13], (0x01,))
    tail_problems: list[str] = []
    if not s.trailing_nonzero:
        _, tail_problems = run(check, s.quote, trailing[::11], (0x01,))
    assert not (problems + more_problems + pem_problems + tail_problems), (problems + more_problems)[:20]
    total = outcomes + more + pem_outcomes
    assert total["MalformedEvidence"] > 0 and total["VerificationFailed"] > 0
    print(f"{s.name}: {sum(total.values())} mutants {dict(total)} in {time.perf_counter() - start:.2f}s")


def test_trailing_bytes_are_outside_the_quote() -> None:
    """With allow_trailing=True, the 39 appended bytes of the go-tdx-guest
    sample may change freely: they are not part of the quote, and the
    result says they are there (Quote.trailing)."""
    s = sample("v4-spr-e4-go-tdx-guest")
    check = oracle(s)
    _, _, trailing = regions(s)
    outcomes, problems = run(check, s.quote, trailing, (0x01,))
    assert len(problems) == len(trailing) and not outcomes
    assert all(p.endswith("accepted") for p in problems)


def test_every_byte_of_one_pck_chain() -> None:
    """The whole PEM text of one quote, byte by byte: canonical PEM is
    required, every certificate must be exactly ecdsa-with-SHA256 in both
    places, the root must be the trusted root's bytes, so no change of a
    character survives."""
    s = sample("v5-90c06f-go-tdx-guest")
    check = oracle(s)
    _, pem, _ = regions(s)
    outcomes, problems = run(check, s.quote, pem, (0x01,))
    assert not problems, problems[:20]
    assert sum(outcomes.values()) == len(pem)


@pytest.mark.parametrize("field", ["tcb_info", "qe_identity"])
def test_every_byte_of_one_samples_collateral(field: str) -> None:
    """TCB info and QE identity bodies: the signature covers the inner
    object's exact bytes; the envelope and the hex signature are parsed
    strictly."""
    s = sample("v4-50806f-trustee")

    def check(body: bytes) -> object:
        return verify_quote(s.quote, replace(s.collateral, **{field: body}), s.verify_at)

    base = getattr(s.collateral, field)
    check(base)
    outcomes, problems = run(check, base, range(len(base)), (0x01,))
    assert not problems, problems[:20]
    assert outcomes["VerificationFailed"] > 0 and outcomes["MalformedEvidence"] > 0
