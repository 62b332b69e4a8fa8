"""Intel SGX: the enclave report body (abi), quote verification (verify) and
the Gramine attester (attester). The DCAP parts shared with TDX (quote
header, signature data, PCK certificates, collateral, TCB levels) are in
:mod:`stockade.evidence.intel`."""
