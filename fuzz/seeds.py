"""Seed inputs for the harnesses: valid examples of each format, from the
test vectors and from stockade's own encoders. ``python fuzz/seeds.py``
writes them to fuzz/corpus/<harness>/ (libFuzzer's corpus directories)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parent / "tests" / "data" / "vectors"


def _messages() -> list[bytes]:
    from stockade.errors import LimitExceeded
    from stockade.wire.evidence import EvidenceBundle
    from stockade.wire.messages import Exit, Hello, Identity, Output, Problem

    bundle = EvidenceBundle("sim", bytes(1184), (("ark", b"A"), ("vcek", b"V")))
    return [
        Hello(nonce=bytes(range(32))).to_cbor(),
        Output(fd=1, data=b"hello\n").to_cbor(),
        Exit(code=3, workload_sha256=bytes(32), timing_us=(("run", 12),)).to_cbor(),
        Problem.from_error(LimitExceeded("memory", "memory")).to_cbor(),
        Identity(evidence=bundle.to_cbor(), events=()).to_cbor(),
    ]


def _framed() -> list[bytes]:
    from stockade.wire.framing import encode_frame

    frames = [encode_frame(m) for m in _messages()]
    return [b"".join(frames), frames[4] + frames[1] + frames[2]]


def _keep_answers() -> list[bytes]:
    """What a Keep sends after the load request: its identity, or a problem."""
    from stockade.wire.framing import encode_frame

    messages = _messages()
    return [encode_frame(messages[4]), encode_frame(messages[3])]


def _packages() -> list[bytes]:
    from stockade.package import Manifest
    from stockade.package.format import encode, wrap_module

    wasm = b"\0asm\x01\x00\x00\x00"
    manifest = Manifest(name="app", version="1.0.0", entry="app.wasm", files=("data/x",), secrets=("k",))
    return [wrap_module(wasm).to_bytes(), encode(manifest, {"app.wasm": wasm, "data/x": b"x"})]


def _snp_reports() -> list[bytes]:
    return [p.read_bytes() for p in sorted(VECTORS.glob("snp/*/report.bin"))]


def _cert_tables() -> list[bytes]:
    from stockade.evidence.snp.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, build_cert_table

    out = []
    for vcek in sorted(VECTORS.glob("snp/*/vcek.der"))[:3]:
        out.append(build_cert_table([(VCEK_GUID, vcek.read_bytes()), (ASK_GUID, b"ask"), (ARK_GUID, b"ark")]))
    return out


def _quotes() -> list[bytes]:
    return [p.read_bytes() for p in sorted(VECTORS.glob("*/*/quote.bin"))]


def _bundles() -> list[bytes]:
    from stockade.wire.evidence import EvidenceBundle, extension_value

    reports = _snp_reports()[:2]
    bundles = [EvidenceBundle("snp", r, (("vcek", b"V"),)) for r in reports]
    return [b.to_cbor() for b in bundles] + [extension_value(b) for b in bundles]


SEEDS = {
    "fuzz_wire_messages": _messages,
    "fuzz_framing": _framed,
    "fuzz_client_session": _keep_answers,
    "fuzz_package": _packages,
    "fuzz_snp_report": _snp_reports,
    "fuzz_snp_cert_table": _cert_tables,
    "fuzz_intel_quote": _quotes,
    "fuzz_evidence_bundle": _bundles,
}


def seeds(harness: str) -> list[bytes]:
    return SEEDS[harness]()


def write_corpus(root: Path = HERE / "corpus") -> None:
    for name in SEEDS:
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        for data in seeds(name):
            (target / hashlib.sha1(data, usedforsecurity=False).hexdigest()).write_bytes(data)
        print(f"{target}: {len(list(target.iterdir()))} inputs", file=sys.stderr)


if __name__ == "__main__":
    write_corpus()
