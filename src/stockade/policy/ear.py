"""A decision as an EAT Attestation Result (EAR), for other tools.

Format: draft-ietf-rats-ear ("EAT Attestation Results"), profile
``tag:github.com,2023:veraison/ear``, with one submodule, ``keep`` (the
attested Keep). JSON uses the claim names, CBOR the draft's integer keys
(as implemented by veraison/rust-ear): ``eat_profile`` 265, ``iat`` 6,
``ear.verifier-id`` 1004 (``developer`` 0, ``build`` 1), ``submods`` 266,
``eat_nonce`` 10, ``ear.status`` 1000, ``ear.trustworthiness-vector`` 1001
(AR4SI claims ``instance-identity`` 0 ... ``sourced-data`` 7),
``ear.appraisal-policy-id`` 1003. Status tiers: none 0, affirming 2,
warning 32, contraindicated 96.

stockade adds two unregistered claims to the submodule, in the private-use
key range: ``ear.stockade.decision`` (-70100: the decision table) and
``ear.stockade.hardware-protection`` (-70101: false for sim).

**The EAR is not signed** (no JWT/COSE envelope yet): it reports what this
stockade process concluded and proves nothing to a third party.

Mapping (AR4SI, draft-ietf-rats-ar4si):

- ``ear.status``: refused -> contraindicated; accepted sim -> warning;
  accepted -> affirming; never better than the worst vector claim.
- vector claims come from the rows that decide on their own (not under
  ``any_of`` or ``not``): hardware (platform, product, signer, TCB, firmware,
  Intel TCB status, advisories, FMSPC), configuration (debug, guest policy,
  VMPL, host data), executables (measurements, registers),
  instance-identity (chip IDs). All passed: 2; else the failed rule's value
  (e.g. 32 "unsafe_hw" for an old TCB, 96 "contraindicated_hw" for a denied
  product, 33 "unrecognized_rt" for an unknown measurement).
- runtime-opaque: 2 (encrypted memory) on real hardware, 96 (visible) when
  debugging is enabled. sim makes no hardware or runtime-opaque claim.
"""

from __future__ import annotations

import base64
from typing import Any

from stockade import __version__
from stockade.policy.model import Decision, Verdict

EAT_PROFILE = "tag:github.com,2023:veraison/ear"
SUBMOD = "keep"
DEVELOPER = "stockade"

TIERS = {"none": 0, "affirming": 2, "warning": 32, "contraindicated": 96}
VECTOR_KEYS = {
    "instance-identity": 0,
    "configuration": 1,
    "executables": 2,
    "file-system": 3,
    "hardware": 4,
    "runtime-opaque": 5,
    "storage-opaque": 6,
    "sourced-data": 7,
}
_AFFIRMING = 2
_ENCRYPTED_RT = 2
_VISIBLE_RT = 96

# CBOR keys
_K_PROFILE, _K_IAT, _K_VERIFIER, _K_SUBMODS, _K_NONCE = 265, 6, 1004, 266, 10
_K_STATUS, _K_VECTOR, _K_POLICY_ID = 1000, 1001, 1003
_K_DECISION, _K_HW = -70100, -70101


def _tier(value: int) -> str:
    if 2 <= value <= 31:
        return "affirming"
    if 32 <= value <= 95:
        return "warning"
    if value in (0, 1):
        return "none"
    return "contraindicated"


def trustworthiness_vector(decision: Decision) -> dict[str, int]:
    """AR4SI claims (name -> value) implied by the decision."""
    vector: dict[str, int] = {}
    for row in decision.rows:
        if not row.category or not row.positive or row.verdict is Verdict.NA:
            continue
        if row.category == "hardware" and not decision.hardware_protected:
            continue
        current = vector.get(row.category)
        value = _AFFIRMING if row.verdict is Verdict.PASS else row.failure_value
        if current is None or (value != _AFFIRMING and (current == _AFFIRMING or value > current)):
            vector[row.category] = value
    if decision.hardware_protected:
        vector["runtime-opaque"] = _VISIBLE_RT if decision.debug else _ENCRYPTED_RT
    return {k: vector[k] for k in VECTOR_KEYS if k in vector}


def status(decision: Decision, vector: dict[str, int] | None = None) -> str:
    vector = trustworthiness_vector(decision) if vector is None else vector
    if not decision.accepted:
        base = "contraindicated"
    elif not decision.hardware_protected:
        base = "warning"
    else:
        base = "affirming"
    tiers = [base, *(_tier(v) for v in vector.values())]
    return max(tiers, key=lambda t: TIERS[t])


def ear_document(decision: Decision, *, nonce: bytes | None = None, iat: int | None = None) -> dict[str, Any]:
    """The EAR claims-set in its JSON form. An EAR reports an appraisal of
    verified evidence: a decision on unverified claims (read from a
    document) raises ValueError."""
    if not decision.claims_verified:
        raise ValueError("an EAR reports an appraisal of verified evidence; these claims were not verified")
    vector = trustworthiness_vector(decision)
    appraisal: dict[str, Any] = {
        "ear.status": status(decision, vector),
        "ear.trustworthiness-vector": vector,
        "ear.appraisal-policy-id": decision.policy_id,
        "ear.stockade.decision": decision.to_json(),
        "ear.stockade.hardware-protection": decision.hardware_protected,
    }
    if not vector:
        del appraisal["ear.trustworthiness-vector"]
    doc: dict[str, Any] = {
        "eat_profile": EAT_PROFILE,
        "iat": int(decision.evaluated_at.timestamp()) if iat is None else iat,
        "ear.verifier-id": {"developer": DEVELOPER, "build": f"stockade {__version__}"},
        "submods": {SUBMOD: appraisal},
    }
    if nonce is not None:
        doc["eat_nonce"] = base64.urlsafe_b64encode(nonce).rstrip(b"=").decode()
    return doc


def ear_json(decision: Decision, *, nonce: bytes | None = None, iat: int | None = None) -> str:
    import json

    return json.dumps(ear_document(decision, nonce=nonce, iat=iat), indent=2)


def ear_cbor(decision: Decision, *, nonce: bytes | None = None, iat: int | None = None) -> bytes:
    """The EAR claims-set as CBOR with the draft's integer keys
    (deterministic encoding)."""
    import cbor2

    doc = ear_document(decision, nonce=nonce, iat=iat)
    sub = doc["submods"][SUBMOD]
    appraisal: dict[int, Any] = {
        _K_STATUS: TIERS[sub["ear.status"]],
        _K_POLICY_ID: sub["ear.appraisal-policy-id"],
    }
    if "ear.trustworthiness-vector" in sub:
        appraisal[_K_VECTOR] = {VECTOR_KEYS[k]: v for k, v in sub["ear.trustworthiness-vector"].items()}
    appraisal[_K_DECISION] = sub["ear.stockade.decision"]
    appraisal[_K_HW] = sub["ear.stockade.hardware-protection"]
    out: dict[int, Any] = {
        _K_PROFILE: doc["eat_profile"],
        _K_IAT: doc["iat"],
        _K_VERIFIER: {0: DEVELOPER, 1: doc["ear.verifier-id"]["build"]},
        _K_SUBMODS: {SUBMOD: appraisal},
    }
    if nonce is not None:
        out[_K_NONCE] = nonce
    data: bytes = cbor2.dumps(out, canonical=True)
    return data
