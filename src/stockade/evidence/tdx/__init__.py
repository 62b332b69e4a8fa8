"""Intel TDX: TD report bodies (abi) and the configfs-tsm attester
(attester). TDX quotes are verified by the one DCAP verifier
(:mod:`stockade.evidence.intel.verify`, found through
:mod:`stockade.evidence.registry` as "tdx"; docs/adr/0014). The DCAP parts shared with SGX (quote
header, signature data, PCK certificates, collateral, TCB levels) are in
:mod:`stockade.evidence.intel`."""
