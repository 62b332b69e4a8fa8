"""atheris harness: SEV-SNP attestation report bytes -> AttestationReport.from_bytes."""

from __future__ import annotations

from _common import Loaded, main


def load() -> Loaded:
    from stockade.errors import MalformedEvidence
    from stockade.evidence.snp.abi import AttestationReport

    return AttestationReport.from_bytes, (MalformedEvidence,)


if __name__ == "__main__":
    main(load)
