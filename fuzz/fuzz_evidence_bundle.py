"""atheris harness: the evidence in a Keep's TLS certificate ->
EvidenceBundle.from_cbor and bundle_from_extension (the extension value)."""

from __future__ import annotations

from _common import Loaded, main


def load() -> Loaded:
    from stockade.errors import MalformedEvidence
    from stockade.wire.evidence import EvidenceBundle, bundle_from_extension

    def target(data: bytes) -> None:
        # A DER OCTET STRING (tag 4) is an extension value; else a bundle.
        if data[:1] == b"\x04":
            bundle_from_extension(data)
        else:
            EvidenceBundle.from_cbor(data)

    return target, (MalformedEvidence,)


if __name__ == "__main__":
    main(load)
