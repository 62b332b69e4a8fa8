"""Exhaustive single-byte mutation: no changed byte of a real (or sim) report
ever verifies, and every refusal is MalformedEvidence or VerificationFailed,
never another exception. Also the endorsement and intermediate certificates
of one real sample, byte by byte.

Cost: 1184 positions x 8 reports with XOR 0x01, plus XOR 0x80 / 0xFF on a
subset; the chain checks are cached by DER, so each case costs about one
ECDSA P-384 verification.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from evidence_support import flip, mutation_outcomes
from snp_support import VERIFY_AT, SimKeys, report_samples, sample
from stockade.evidence.pki import load_der
from stockade.evidence.sim.channel import ReportRequest
from stockade.evidence.sim.psp import SimPsp
from stockade.evidence.snp.abi import REPORT_SIZE
from stockade.evidence.snp.verify import TrustAnchor, amd_anchors, verify_report

Case = tuple[bytes, bytes, bytes, tuple[TrustAnchor, ...], datetime]


def _mutants(base: bytes, masks: dict[int, int]) -> list[tuple[str, bytes]]:
    """(label "0xPOS^0xMASK", mutated bytes): for each mask m, every
    masks[m]-th byte (1: every byte) XORed with m."""
    return [
        (f"0x{pos:03X}^0x{mask:02X}", flip(base, pos, mask))
        for mask, step in masks.items()
        for pos in range(0, len(base), step)
    ]


def _run(case: Case, which: int, masks: dict[int, int]) -> tuple[Counter[str], list[str]]:
    base = case[which]
    assert isinstance(base, bytes)

    def check(mutated: bytes) -> object:
        args = list(case)
        args[which] = mutated
        return verify_report(*args)  # type: ignore[arg-type]

    return mutation_outcomes(check, _mutants(base, masks))


def _cases(state_dir: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {
        s.name: (s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT) for s in report_samples()
    }
    sim = SimKeys(state_dir)
    report = SimPsp(sim.chip, measurement=bytes(48)).report(ReportRequest(report_data=bytes(64))).report
    cases["sim"] = (report, sim.chip.vcek_der, sim.chip.ask_der, (sim.anchor,), datetime.now().astimezone())
    return cases


REPORT_MASKS = {0x01: 1, 0x80: 3, 0xFF: 7}


@pytest.mark.parametrize("name", [*(s.name for s in report_samples()), "sim"])
def test_every_single_byte_change_of_a_report_is_refused(state_dir: Path, name: str) -> None:
    case = _cases(state_dir)[name]
    verify_report(*case)  # the unmodified case verifies (and warms the chain cache)
    start = time.perf_counter()
    outcomes, problems = _run(case, 0, REPORT_MASKS)
    elapsed = time.perf_counter() - start
    assert not problems, problems[:20]
    total = sum(outcomes.values())
    assert total == REPORT_SIZE + len(range(0, REPORT_SIZE, 3)) + len(range(0, REPORT_SIZE, 7))
    # Both failure classes occur: structure (version, reserved, ...) and crypto.
    assert outcomes["MalformedEvidence"] > 0
    assert outcomes["VerificationFailed"] > 0
    print(f"{name}: {total} mutants, {dict(outcomes)}, {elapsed:.2f}s")


def _unsigned_envelope(der_bytes: bytes) -> range:
    """Bytes between the TBSCertificate and the signature value: the outer
    signatureAlgorithm and the signature BIT STRING header. The signature
    covers neither."""
    cert = load_der(der_bytes, "certificate")
    tbs = cert.tbs_certificate_bytes
    return range(der_bytes.index(tbs) + len(tbs), der_bytes.rindex(cert.signature))


@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
@pytest.mark.parametrize("which", [1, 2], ids=["vcek", "ask"])
def test_every_single_byte_change_of_a_certificate_is_refused(which: int) -> None:
    """Mutated VCEK/ASK bytes: refused with our two error classes (pyca's lazy
    parse errors used to escape as ValueError, InvalidVersion and
    DuplicateExtension). The one exception, documented here: bytes outside
    the signed TBSCertificate that pyca still parses the same way, i.e. the
    outer signatureAlgorithm parameters (the verifier always uses RSASSA-PSS
    SHA-384/MGF1-SHA-384/salt 48 whatever they say) and the BIT STRING
    unused-bits byte when the signature's last bit is zero: such changes
    may verify, and change nothing that is verified."""
    s = sample("milan-v3-oak")
    case: Case = (s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT)
    verify_report(*case)
    outcomes, problems = _run(case, which, {0x01: 1, 0x80: 5})
    cert_der = case[which]
    assert isinstance(cert_der, bytes)
    unsigned = _unsigned_envelope(cert_der)
    real = [p for p in problems if not (p.endswith("accepted") and int(p[2:5], 16) in unsigned)]
    assert not real, real[:20]
    print(f"{len(problems)} accepted changes, all in the unsigned envelope {unsigned}: {problems}")
    assert outcomes["MalformedEvidence"] > 0
    assert outcomes["VerificationFailed"] > 0
