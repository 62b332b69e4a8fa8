"""Hand-made claims for testing policies. TEST ONLY.

:func:`make_claims` returns a :class:`~stockade.evidence.claims.VerifiedClaims`
that **no verifier produced**: it is built with the verifier's private token
so that you can test a policy file against any combination of values::

    from stockade.policy import evaluate, load_policy
    from stockade.testing.claims import make_claims

    decision = evaluate(make_claims(product="Turin"), load_policy("deploy.toml"))
    assert not decision.accepted

Never use these functions on a path that decides whether to trust a Keep:
claims made here vouch for nothing. :func:`claims_from_json` reads a claims
document (``VerifiedClaims.to_json()``, or the ``attestation`` object of
``stockade run --json``) as forged VerifiedClaims, for tests; ``stockade
policy check --claims`` reads :class:`stockade.policy.claims.UnverifiedClaims`.

Defaults describe a plausible Keep: SNP on a Milan chip with the TCB of the
sim chip (bootloader 4, tee 0, snp 24, microcode 219), firmware 1.55.29,
debug off, VMPL 0, verified 2025-08-01 under AMD's Milan root. With
``platform="tdx"`` or ``"sgx"`` the defaults change to Intel-shaped claims
(product "Intel TDX" / "Intel SGX", registers, FMSPC, TCB status
UpToDate), in the shape of stockade's Intel verifier.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

from stockade.evidence.claims import _VERIFIED, VerifiedClaims
from stockade.policy.claims import UnverifiedClaims

#: SHA-256 of AMD's Milan ARK (the root the default claims name).
AMD_MILAN_ROOT_SHA256 = "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"
#: Stand-in for the SHA-256 of Intel's SGX root CA in Intel-shaped claims.
INTEL_ROOT_SHA256 = hashlib.sha256(b"stockade.testing.claims/intel-root").hexdigest()
VERIFIED_AT = datetime(2025, 8, 1, tzinfo=UTC)

SNP_FLAGS = (
    "smt_allowed",
    "migrate_ma",
    "debug",
    "single_socket",
    "cxl_allowed",
    "mem_aes_256_xts",
    "rapl_disabled",
    "ciphertext_hiding",
    "page_swap_disabled",
)


TDX_FLAGS = ("debug", "sept_ve_disable", "migratable", "pks", "key_locker", "perfmon")
SGX_FLAGS = ("init", "debug", "mode64bit", "provisionkey", "einittokenkey", "cet", "kss", "aexnotify")


def _digest(label: str, size: int) -> bytes:
    return hashlib.sha512(f"stockade.testing.claims/{label}".encode()).digest()[:size]


def _defaults(platform: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "platform": platform,
        "product": "Milan",
        "signer": "VCEK",
        "measurement": _digest("measurement", 48),
        "report_data": bytes(64),
        "host_data": bytes(32),
        "debug": False,
        "vmpl": 0,
        "chip_id": _digest("chip_id", 64),
        "tcb": (("bootloader", 4), ("tee", 0), ("snp", 24), ("microcode", 219)),
        "firmware": "1.55.29",
        "policy_flags": tuple((f, f == "smt_allowed") for f in SNP_FLAGS),
        "report_version": 3,
        "root_fingerprint": AMD_MILAN_ROOT_SHA256,
        "verified_at": VERIFIED_AT,
    }
    if platform == "tdx":
        mrtd = _digest("mrtd", 48)
        base.update(
            product="Intel TDX",
            signer="PCK-Platform",
            measurement=mrtd,
            host_data=bytes(48),  # MRCONFIGID
            vmpl=None,
            chip_id=_digest("ppid", 16),  # PPID
            tcb=(),
            firmware="TDX_01 SVN 4",
            policy_flags=tuple((f, f == "sept_ve_disable") for f in TDX_FLAGS),
            report_version=4,
            root_fingerprint=INTEL_ROOT_SHA256,
            registers=(
                ("mrtd", mrtd),
                *((f"rtmr{i}", _digest(f"rtmr{i}", 48)) for i in range(4)),
                ("mrseam", _digest("mrseam", 48)),
                ("mrsignerseam", bytes(48)),
                ("mrconfigid", bytes(48)),
                ("mrowner", bytes(48)),
                ("mrownerconfig", bytes(48)),
            ),
            tcb_status="UpToDate",
            fmspc="00806f050000",
        )
    elif platform == "sgx":
        mrenclave = _digest("mrenclave", 32)
        base.update(
            product="Intel SGX",
            signer="PCK-Platform",
            measurement=mrenclave,
            host_data=bytes(64),  # CONFIGID
            vmpl=None,
            chip_id=_digest("ppid", 16),
            tcb=(),
            firmware="",
            policy_flags=tuple((f, f in ("init", "mode64bit")) for f in SGX_FLAGS),
            report_version=3,
            root_fingerprint=INTEL_ROOT_SHA256,
            registers=(("mrenclave", mrenclave), ("mrsigner", _digest("mrsigner", 32))),
            tcb_status="UpToDate",
            fmspc="00a067110000",
        )
    return base


def make_claims(**overrides: Any) -> VerifiedClaims:
    """Claims with realistic defaults and ``overrides`` applied. TEST ONLY.

    Every ``VerifiedClaims`` field may be overridden. ``tcb``,
    ``policy_flags`` and ``registers`` also accept dicts; a
    ``policy_flags`` dict is merged into the defaults. ``debug`` and the
    ``debug`` flag of ``policy_flags`` (SNP guest policy, TDX TD attributes,
    SGX enclave attributes) are kept equal (give either one).
    """
    platform = overrides.get("platform", "snp")
    fields = _defaults(platform)
    if isinstance(overrides.get("policy_flags"), dict):
        overrides = {
            **overrides,
            "policy_flags": {**dict(fields["policy_flags"]), **overrides["policy_flags"]},
        }
    for key in ("tcb", "policy_flags", "registers"):
        if isinstance(overrides.get(key), dict):
            overrides = {**overrides, key: tuple(overrides[key].items())}
    fields.update(overrides)
    flags = dict(fields["policy_flags"])
    if "debug" in flags:
        if "debug" in overrides:
            flags["debug"] = bool(fields["debug"])
            fields["policy_flags"] = tuple(flags.items())
        else:
            fields["debug"] = flags["debug"]
    known = {f.name for f in dataclasses.fields(VerifiedClaims)} - {"_token"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"make_claims: unknown claim(s) {', '.join(unknown)}")
    return VerifiedClaims(**fields, _token=_VERIFIED)


def claims_from_json(doc: Any, source: str = "claims") -> VerifiedClaims:
    """Claims from a claims document (the inverse of ``to_json``), forged
    as VerifiedClaims. TEST ONLY: the result was not verified by anything
    (``stockade policy check --claims`` uses
    :class:`stockade.policy.claims.UnverifiedClaims` instead). Raises
    UsageError naming the key for malformed documents."""
    unverified = UnverifiedClaims.from_json(doc, source)
    return VerifiedClaims(
        **{f.name: getattr(unverified, f.name) for f in dataclasses.fields(UnverifiedClaims)},
        _token=_VERIFIED,
    )
