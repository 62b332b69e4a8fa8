"""The platforms evidence can come from: one enum at the lowest layer that
names them (wire, evidence, policy, client and the CLI all import it).

The values are the strings the wire format carries (the ``platform`` field
of the evidence bundle, docs/protocol.cddl) and policies name; a
:class:`Platform` compares equal to its string, so code and data that still
hold the string keep working.
"""

from __future__ import annotations

import enum


class Platform(enum.StrEnum):
    #: A process guarded by a simulated AMD PSP: NO hardware protection.
    SIM = "sim"
    SNP = "snp"
    TDX = "tdx"
    SGX = "sgx"
    #: A TDX quote signed by a simulated QE under a generated Intel-shaped
    #: PKI (stockade.evidence.sim.tdx_chip): NO hardware protection.
    SIM_TDX = "sim-tdx"

    @property
    def hardware_protected(self) -> bool:
        return self not in (Platform.SIM, Platform.SIM_TDX)


#: Every platform name, in the order the wire format lists them.
PLATFORMS: tuple[str, ...] = tuple(p.value for p in Platform)

__all__ = ["PLATFORMS", "Platform"]
