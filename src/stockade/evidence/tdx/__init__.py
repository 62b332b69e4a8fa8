"""Intel TDX: TD report bodies (abi), quote verification (verify) and the
configfs-tsm attester (attester). The DCAP parts shared with SGX (quote
header, signature data, PCK certificates, collateral, TCB levels) are in
:mod:`stockade.evidence.intel`."""
