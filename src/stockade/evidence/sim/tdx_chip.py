"""The sim TDX chip: a locally generated fake Intel DCAP PKI and a sim QE.

Generated at first use in ``<state dir>/sim/tdx`` and kept there, like the
sim SNP chip (:mod:`stockade.evidence.sim.chip`): an "Intel SGX Root CA",
the PCK Platform and Processor CAs, the TCB Signing certificate (all ECDSA
P-256, ecdsa-with-SHA256, CNs as Intel issues them) and one PCK certificate
with the SGX extension (PPID, TCB components, PCE SVN, CPUSVN, PCE-ID,
FMSPC, SGX type, platform instance and configuration), built by
:mod:`stockade.evidence.sim.intel_pki` (the same code as the tests' fake
Intel PKI). Every subject's organisation says NO HARDWARE PROTECTION.

The sim QE (:class:`SimQe`) signs byte-exact TDX v4 quotes (TD report 1.0
body; Intel TDX DCAP Quoting Library API, appendix "Quote format"): MRTD is
the Keep's launch measurement (48 bytes, as MRTD is a SHA-384 digest),
RTMR0..3 are zero, REPORTDATA is the 64 bytes the Keep asked for. The quote
is signed by an ECDSA P-256 attestation key made per QE process and
certified by a QE report that the PCK key signs (report data =
SHA-256(attestation key || QE auth data) || 32 zero bytes), with
certification data type 6 carrying the PCK chain (leaf, Platform CA, root).
Collateral (TCB info v3 for TDX, TD_QE identity v2, both signed by the TCB
Signing key; the root CA CRL and the PCK Platform CA CRL) is issued by the
QE process when it starts and valid for 30 days; it travels in the evidence
bundle. It is signed, so the host carrying it can only withhold it, not
forge it.

THE SIM TDX CHIP GIVES NO HARDWARE PROTECTION: its private keys are
ordinary files readable by the host's root user, and nothing isolates the
Keep's memory. A quote whose chain ends at this root is "sim-tdx", never
"tdx" (:mod:`stockade.evidence.sim.tdx_verify`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.evidence.intel.abi import pem_encode
from stockade.evidence.sim.channel import ReportRequest, ReportResponse
from stockade.evidence.sim.chip import create_once, sim_dir
from stockade.evidence.sim.intel_pki import FakeIntelPki, FakePck, PckSpec, QuoteParts, default_td_body

ORG = "stockade sim TDX chip - NO HARDWARE PROTECTION"
LABEL = "sim-tdx \N{EM DASH} NO HARDWARE PROTECTION (simulated TDX, for development only)"
#: The sim platform's FMSPC (family-model-stepping-platform-custom SKU);
#: a made-up value, not one of Intel's.
FMSPC = bytes.fromhex("00806f050000")
#: TEE_TCB_SVN of the sim TDX module (byte 0: module SVN, byte 1: major
#: version), matched by the sim TCB info's TDX levels.
TEE_TCB_SVN = bytes.fromhex("03010000000000000000000000000000")
#: MRSEAM of the (non-existent) sim TDX module.
SEAM_MEASUREMENT = hashlib.sha384(b"stockade sim TDX module - NO HARDWARE PROTECTION").digest()
COLLATERAL_VALIDITY = timedelta(days=30)
_KEYS = ("root", "platform", "processor", "tcb_signing", "pck")
#: Names of the collateral items in a sim-tdx evidence bundle's certs.
COLLATERAL_NAMES = (
    "tcb_info",
    "qe_identity",
    "tcb_signing_chain",
    "root_ca_crl",
    "pck_crl",
    "pck_crl_issuer_chain",
)


def tdx_dir(state_dir: Path) -> Path:
    return sim_dir(state_dir) / "tdx"


@dataclass(frozen=True)
class SimTdxChip:
    pki: FakeIntelPki
    pck: FakePck

    @property
    def root_der(self) -> bytes:
        return self.pki.root_der


def _spec(ppid: bytes) -> PckSpec:
    return PckSpec(fmspc=FMSPC, ppid=ppid, tcb_components=(3, 3, 2, 2, 2, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _generate(target: Path, now: datetime) -> None:
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in _KEYS}
    pki = FakeIntelPki(
        now=now,
        years=25,
        root_key=keys["root"],
        platform_ca_key=keys["platform"],
        processor_ca_key=keys["processor"],
        tcb_signing_key=keys["tcb_signing"],
        org=ORG,
    )
    ppid = secrets.token_bytes(16)
    pck = pki.pck(_spec(ppid), key=keys["pck"], not_after=now + timedelta(days=365 * 7))
    files: dict[str, bytes] = {f"{name}.key": _pem_key(key) for name, key in keys.items()}
    files.update({f"{name}.der": der for name, der in pki.issued_certificates().items()})
    files["pck.der"] = pck.der
    files["chip.json"] = json.dumps(
        {"ppid": ppid.hex(), "fmspc": FMSPC.hex(), "created": now.isoformat(), "note": ORG}, indent=2
    ).encode()
    for name, data in files.items():
        mode = 0o600 if name.endswith(".key") else 0o644
        fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def ensure_tdx_chip(state_dir: Path, now: datetime | None = None) -> bool:
    """Create the sim TDX chip in ``state_dir`` unless it exists; True when
    it had to be generated (fast: P-256 keys only)."""
    return create_once(state_dir, tdx_dir(state_dir), _generate, now)


def tdx_chip_exists(state_dir: Path) -> bool:
    return (tdx_dir(state_dir) / "chip.json").exists()


def sim_tdx_root(state_dir: Path) -> bytes:
    """DER of the sim Intel root kept in ``state_dir`` (the root a client
    may trust for sim-tdx evidence)."""
    return (tdx_dir(state_dir) / "root.der").read_bytes()


def load_tdx_chip(state_dir: Path) -> SimTdxChip:
    chip = tdx_dir(state_dir)
    keys: dict[str, ec.EllipticCurvePrivateKey] = {}
    for name in _KEYS:
        key = serialization.load_pem_private_key((chip / f"{name}.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"sim TDX {name} key is not an EC key")
        keys[name] = key
    info = json.loads((chip / "chip.json").read_text())
    pki = FakeIntelPki(
        now=datetime.fromisoformat(info["created"]),
        years=25,
        root_key=keys["root"],
        platform_ca_key=keys["platform"],
        processor_ca_key=keys["processor"],
        tcb_signing_key=keys["tcb_signing"],
        org=ORG,
        issued={name: (chip / f"{name}.der").read_bytes() for name in _KEYS if name != "pck"},
    )
    pck = FakePck(
        key=keys["pck"],
        der=(chip / "pck.der").read_bytes(),
        ca="platform",
        spec=_spec(bytes.fromhex(info["ppid"])),
    )
    return SimTdxChip(pki=pki, pck=pck)


def collateral_items(chip: SimTdxChip, now: datetime) -> dict[str, bytes]:
    """Fresh collateral for the sim TDX chip, issued at ``now`` (an hour
    back, for clock skew) and valid for COLLATERAL_VALIDITY: the names are
    COLLATERAL_NAMES, the values as Intel's PCS serves them (signed JSON
    bodies, PEM issuer chains, DER CRLs)."""
    pki, pck = chip.pki, chip.pck
    issue = now - timedelta(hours=1)
    until = issue + COLLATERAL_VALIDITY
    info = pki.tcb_info_json(
        "tdx",
        pck.spec,
        tee_tcb_svn=TEE_TCB_SVN,
        module_levels=((TEE_TCB_SVN[0], "UpToDate"),),
        issue=issue,
        next_update=until,
    )
    identity = pki.qe_identity_json("tdx", issue=issue, next_update=until)
    return {
        "tcb_info": pki.sign_tcb_info(info),
        "qe_identity": pki.sign_qe_identity(identity),
        "tcb_signing_chain": pki.tcb_signing_chain(),
        "root_ca_crl": pki.crl("root", this_update=issue, next_update=until),
        "pck_crl": pki.crl(pck.ca, this_update=issue, next_update=until),
        "pck_crl_issuer_chain": pem_encode(pki.ca_ders[pck.ca]) + pem_encode(pki.root_der),
    }


class SimQe:
    """The sim TDX quoting enclave for one Keep: signs TDX v4 quotes over
    the Keep's report data with MRTD = the Keep's launch measurement. Its
    keys (PCK, attestation key) never enter the Keep."""

    def __init__(self, chip: SimTdxChip, measurement: bytes, now: datetime | None = None) -> None:
        self.served = 0
        if len(measurement) != 48:
            raise ValueError("measurement must be 48 bytes")
        self.chip = chip
        self.measurement = measurement
        self.attestation_key = ec.generate_private_key(ec.SECP256R1())
        self.collateral = tuple(sorted(collateral_items(chip, now or datetime.now(UTC)).items()))

    def quote_parts(self, report_data: bytes) -> QuoteParts:
        """The quote's parts (header, TD report, signature, attestation key,
        QE report and its PCK signature, QE auth data, PCK chain)."""
        body = default_td_body(
            report_data=report_data,
            tee_tcb_svn=TEE_TCB_SVN,
            mr_seam=SEAM_MEASUREMENT,
            mr_td=self.measurement,
        )
        return self.chip.pki.quote_parts("tdx", self.chip.pck, body=body, ak=self.attestation_key)

    def quote(self, report_data: bytes) -> bytes:
        """A TDX v4 quote over ``report_data`` (64 bytes)."""
        return self.quote_parts(report_data).to_bytes()

    def report(self, request: ReportRequest) -> ReportResponse:
        """Answer a report request on the sim channel: the quote, and the
        collateral as the certificate table."""
        return ReportResponse(report=self.quote(request.report_data), certs=self.collateral)
