"""The steward: stockade's attestation-backed certificate authority
(docs/steward.md, ADR 0026).

Built now: the CA (:mod:`.ca`; key in a file for development or generated
in a PKCS#11 token, :mod:`.pkcs11`), the workload certificate profile
(:mod:`.profile`), and the peer-side check of a workload certificate
(:mod:`.verify`). *Planned* (issue 17): the HTTPS service that appraises a
Keep's evidence and issues certificates, and logs each one.

Layering: imports errors, the transparency log and cryptography (and
python-pkcs11, lazily); never the host, the Keep, the client or the CLI.
"""

from __future__ import annotations
