"""Intel SGX: the enclave report body (abi) and the Gramine attester
(attester). SGX quotes are verified by the one DCAP verifier
(:mod:`stockade.evidence.intel.verify`, found through
:mod:`stockade.evidence.registry` as "sgx"; docs/adr/0014). The DCAP parts shared with TDX (quote
header, signature data, PCK certificates, collateral, TCB levels) are in
:mod:`stockade.evidence.intel`."""
