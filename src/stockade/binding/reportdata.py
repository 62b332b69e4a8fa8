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


IDENTITY_DOMAIN = b"stockade/workload-identity/v1\x00"


def identity_report_data(nonce: bytes, spki_der: bytes, register: bytes) -> bytes:
    """Report data of the second attestation, after the workload is loaded:

    SHA-512(IDENTITY_DOMAIN || nonce || SHA-256(SPKI DER) || register)

    ``nonce`` is the fresh one the client sent with the load request,
    ``register`` the final event-log register (stockade.binding.eventlog). The
    same TLS key as the first attestation is bound, so both reports speak
    of the one Keep at the end of this TLS session.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(register) != 32:
        raise ValueError(f"register must be 32 bytes, got {len(register)}")
    return hashlib.sha512(IDENTITY_DOMAIN + nonce + hashlib.sha256(spki_der).digest() + register).digest()


STEWARD_DOMAIN = b"stockade/steward-certify/v1\x00"


def steward_report_data(nonce: bytes, spki_der: bytes, register: bytes) -> bytes:
    """Report data of a Keep's certificate request to the steward (issue 17,
    docs/steward.md):

    SHA-512(STEWARD_DOMAIN || nonce || SHA-256(SPKI DER) || register)

    ``nonce`` is the steward's single-use challenge, ``spki_der`` the
    SubjectPublicKeyInfo of the Keep's service key (the key of the CSR),
    ``register`` the Keep's final event-log register. Its own domain label
    keeps this value from ever equalling a deploy binding
    (:func:`report_data_for`) or an identity binding
    (:func:`identity_report_data`) over the same inputs: evidence made for
    a client cannot be replayed to the steward, nor the reverse.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(register) != 32:
        raise ValueError(f"register must be 32 bytes, got {len(register)}")
    return hashlib.sha512(STEWARD_DOMAIN + nonce + hashlib.sha256(spki_der).digest() + register).digest()
