"""The steward: stockade's attestation-backed certificate authority
(docs/steward.md, ADR 0026).

The CA (:mod:`.ca`; key in a file for development or generated in a
PKCS#11 token, :mod:`.pkcs11`), the workload certificate profile
(:mod:`.profile`), the peer-side check of a workload certificate
(:mod:`.verify`), the HTTPS service that appraises a Keep's evidence
(:mod:`.appraise`) and issues certificates, logging each issuance and
refusal (:mod:`.service`, :mod:`.api`, :mod:`.logkey`), and the Keep's
request library with the client's check of its answer (:mod:`.request`).

Layering: imports errors, binding, wire, evidence, policy, the
transparency log, cryptography and Starlette/uvicorn (python-pkcs11
lazily); never the host, the Keep, the client or the CLI.
:mod:`.request` and :mod:`.api` run inside the Keep and import no
verifier, policy or service code.
"""

from __future__ import annotations
