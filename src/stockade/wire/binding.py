"""The binding of a client's nonce and a Keep's public key into report data.

report_data = SHA-512(DOMAIN || nonce || SHA-256(SubjectPublicKeyInfo DER))

The 64-byte result fills the REPORT_DATA field of an SEV-SNP report (and the
64-byte report data of TDX/SGX quotes). The domain label keeps this hash from
being confused with any other use of the same inputs.
"""

from __future__ import annotations

import hashlib

DOMAIN = b"stockade/keep-binding/v1\x00"
NONCE_SIZE = 32


def report_data_for(nonce: bytes, spki_der: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return hashlib.sha512(DOMAIN + nonce + hashlib.sha256(spki_der).digest()).digest()
