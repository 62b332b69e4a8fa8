"""atheris harness: a GHCB certificate table (provisioned by the host) ->
parse_cert_table and bundle_certs."""

from __future__ import annotations

from _common import Loaded, main


def load() -> Loaded:
    from stockade.errors import MalformedEvidence
    from stockade.evidence.snp.attester import bundle_certs
    from stockade.evidence.snp.certtable import parse_cert_table

    def target(data: bytes) -> None:
        parse_cert_table(data)
        bundle_certs(data)

    return target, (MalformedEvidence,)


if __name__ == "__main__":
    main(load)
