"""A fake Intel DCAP PKI for tests: re-exports
:mod:`stockade.evidence.sim.intel_pki` (one implementation, shared with the
sim TDX chip). NOTHING HERE IS INTEL'S; these objects exist for tests.
"""

from __future__ import annotations

from stockade.evidence.sim.intel_pki import (
    FAKE_ORG,
    QE_ATTRIBUTES,
    QE_ATTRIBUTES_MASK,
    QE_AUTH_DATA,
    QE_MRSIGNER,
    QE_PROD_ID,
    FakeIntelPki,
    FakePck,
    Level,
    PckSpec,
    QuoteParts,
    default_enclave_body,
    default_qe_report,
    default_td_body,
    fake_name,
    raw_public,
    raw_sign,
    resign,
    signed_body,
)

__all__ = [
    "FAKE_ORG",
    "QE_ATTRIBUTES",
    "QE_ATTRIBUTES_MASK",
    "QE_AUTH_DATA",
    "QE_MRSIGNER",
    "QE_PROD_ID",
    "FakeIntelPki",
    "FakePck",
    "Level",
    "PckSpec",
    "QuoteParts",
    "default_enclave_body",
    "default_qe_report",
    "default_td_body",
    "fake_name",
    "raw_public",
    "raw_sign",
    "resign",
    "signed_body",
]
