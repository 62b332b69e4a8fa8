"""TDX TD report body layouts: the only place that knows their offsets.

Source: Intel "TDX DCAP Quoting Library API", appendix "TD Quote Body"
(TD report 1.0, 584 bytes, quote v4 and v5 body type 2) and "TD Quote Body
Descriptor"/"TD report 1.5" (648 bytes, quote v5 body type 3: adds
TEE_TCB_SVN2 and MRSERVICETD); TD attributes from the "Intel TDX Module
ABI Specification", "ATTRIBUTES". Integers are little-endian.

The TD report body has no reserved ranges; SEAMATTRIBUTES must be zero,
which the verifier checks against the TCB info (Intel QVL rule), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.errors import MalformedEvidence

TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648

_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("tee_tcb_svn", 0, 16),
    ("mr_seam", 16, 48),
    ("mr_signer_seam", 64, 48),
    ("seam_attributes", 112, 8),
    ("td_attributes", 120, 8),
    ("xfam", 128, 8),
    ("mr_td", 136, 48),
    ("mr_config_id", 184, 48),
    ("mr_owner", 232, 48),
    ("mr_owner_config", 280, 48),
    ("rtmr0", 328, 48),
    ("rtmr1", 376, 48),
    ("rtmr2", 424, 48),
    ("rtmr3", 472, 48),
    ("report_data", 520, 64),
    # TD report 1.5 only:
    ("tee_tcb_svn2", 584, 16),
    ("mr_service_td", 600, 48),
)
FIELD_SPANS = {name: (off, off + n) for name, off, n in _FIELDS}

#: TD ATTRIBUTES bits (Intel TDX Module ABI specification, TDATTRIBUTES:
#: TUD.DEBUG, SEC.SEPT_VE_DISABLE, SEC.MIGRATABLE, SEC.PKS, SEC.KL,
#: OTHER.PERFMON): claims.policy_flags name -> (bit, spec name). Policy
#: explanations use this table too (policy/rules.py).
TD_ATTRIBUTE_BITS: dict[str, tuple[int, str]] = {
    "debug": (0, "DEBUG"),
    "sept_ve_disable": (28, "SEPT_VE_DISABLE"),
    "migratable": (29, "MIGRATABLE"),
    "pks": (30, "PKS"),
    "key_locker": (31, "KL"),
    "perfmon": (63, "PERFMON"),
}


@dataclass(frozen=True)
class TdReport:
    """A parsed TD report body (1.0 or 1.5); ``raw`` keeps the exact bytes."""

    raw: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None  # TD report 1.5 only
    mr_service_td: bytes | None  # TD report 1.5 only

    @classmethod
    def from_bytes(cls, data: bytes) -> TdReport:
        data = bytes(data)
        if len(data) not in (TD_REPORT10_SIZE, TD_REPORT15_SIZE):
            raise MalformedEvidence(
                f"TD report body must be {TD_REPORT10_SIZE} or {TD_REPORT15_SIZE} bytes, got {len(data)}"
            )
        v15 = len(data) == TD_REPORT15_SIZE
        f = {name: data[off : off + n] for name, off, n in _FIELDS if v15 or off < TD_REPORT10_SIZE}
        return cls(
            raw=data,
            tee_tcb_svn=f["tee_tcb_svn"],
            mr_seam=f["mr_seam"],
            mr_signer_seam=f["mr_signer_seam"],
            seam_attributes=f["seam_attributes"],
            td_attributes=f["td_attributes"],
            xfam=f["xfam"],
            mr_td=f["mr_td"],
            mr_config_id=f["mr_config_id"],
            mr_owner=f["mr_owner"],
            mr_owner_config=f["mr_owner_config"],
            rtmr0=f["rtmr0"],
            rtmr1=f["rtmr1"],
            rtmr2=f["rtmr2"],
            rtmr3=f["rtmr3"],
            report_data=f["report_data"],
            tee_tcb_svn2=f.get("tee_tcb_svn2"),
            mr_service_td=f.get("mr_service_td"),
        )

    def to_bytes(self) -> bytes:
        return self.raw

    @property
    def is_v15(self) -> bool:
        return len(self.raw) == TD_REPORT15_SIZE

    @property
    def td_attributes_int(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes_int & 1)

    def attribute_flags(self) -> dict[str, bool]:
        value = self.td_attributes_int
        return {name: bool(value >> bit & 1) for name, (bit, _) in TD_ATTRIBUTE_BITS.items()}

    @property
    def module_svn(self) -> int:
        """TEE_TCB_SVN[0]: the TDX module's SVN."""
        return self.tee_tcb_svn[0]

    @property
    def module_major(self) -> int:
        """TEE_TCB_SVN[1]: the TDX module's major version (0 before TDX 1.5),
        which names the TCB info's module identity ``TDX_%02X``."""
        return self.tee_tcb_svn[1]

    def registers(self) -> tuple[tuple[str, bytes], ...]:
        regs = [
            ("mrtd", self.mr_td),
            ("rtmr0", self.rtmr0),
            ("rtmr1", self.rtmr1),
            ("rtmr2", self.rtmr2),
            ("rtmr3", self.rtmr3),
            ("mrseam", self.mr_seam),
            ("mrsignerseam", self.mr_signer_seam),
            ("mrconfigid", self.mr_config_id),
            ("mrowner", self.mr_owner),
            ("mrownerconfig", self.mr_owner_config),
            ("td_attributes", self.td_attributes),
            ("xfam", self.xfam),
            ("seam_attributes", self.seam_attributes),
            ("tee_tcb_svn", self.tee_tcb_svn),
        ]
        if self.tee_tcb_svn2 is not None and self.mr_service_td is not None:
            regs += [("tee_tcb_svn2", self.tee_tcb_svn2), ("mrservicetd", self.mr_service_td)]
        return tuple(regs)


def with_fields(body: bytes, **fields: bytes) -> bytes:
    """``body`` with named fields replaced (bytes of the exact length). For
    building test reports; verification never re-serialises."""
    buf = bytearray(body)
    for name, value in fields.items():
        start, end = FIELD_SPANS[name]
        if len(value) != end - start or end > len(buf):
            raise ValueError(f"{name} must be {end - start} bytes and inside the body")
        buf[start:end] = value
    return bytes(buf)
