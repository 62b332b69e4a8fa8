"""The sim PSP: a host-side process that signs SNP reports for one Keep.

Started by the keep loader next to each sim Keep, with one end of a socket
pair (the Keep holds the other end, as a guest holds /dev/sev-guest) and the
launch digest of the Keep it serves (the loader computed it, as a hypervisor
feeds launch pages to the real PSP). It answers report requests with a
byte-exact ATTESTATION_REPORT version 3 signed by the sim VCEK. The VCEK
private key lives only in this process and the state directory, never in
the Keep.

It also answers MSG_KEY_REQ (:meth:`SimPsp.derive_key`): a 32-byte key
derived, as the real firmware does (SEV-SNP Firmware ABI spec, pub. 56860,
"MSG_KEY_REQ"), from the root key (the VCEK: the chip's secret, itself
specific to the chip's TCB) mixed with the guest fields the request selects
(policy, image and family ids, the launch measurement of the Keep this PSP
serves, guest SVN, TCB version): a Keep with another runtime (another
measurement) on the same sim chip gets another key. The Keep seals its
compile cache with it (stockade.keep.compilecache, ADR 0023). THE SIM
GIVES NO HARDWARE PROTECTION: the VCEK key is a file the host's root reads.
The sim TDX QE refuses key requests: TDX offers no sealing key without a
sealing service.

With ``--flavour tdx`` the same process is the sim TDX QE instead
(:class:`stockade.evidence.sim.tdx_chip.SimQe`): it answers the same
report requests with a TDX v4 quote and its collateral (backend sim-tdx).

Usage: python -m stockade.evidence.sim.psp --state DIR --fd N --measurement HEX [--flavour snp|tdx]
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import select
import socket
import struct
import sys
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stockade.errors import ProtocolError, StockadeError
from stockade.evidence.sim import chip as simchip
from stockade.evidence.sim.channel import (
    KeyRequest,
    KeyResponse,
    ReportRequest,
    ReportResponse,
    error_response,
    request_type,
)
from stockade.evidence.snp.abi import (
    DERIVED_KEY_SIZE,
    FIELD_FAMILY_ID,
    FIELD_GUEST_POLICY,
    FIELD_GUEST_SVN,
    FIELD_IMAGE_ID,
    FIELD_MEASUREMENT,
    FIELD_TCB_VERSION,
    REPORT_SIZE,
    ROOT_VCEK,
    SIGNED_SIZE,
    ReportFields,
    with_signature,
)
from stockade.wire.framing import FrameDecoder, encode_frame

#: The last line a sim PSP process logs; the keep manager parses it.
SERVED_LINE = "sim PSP: served {} report(s)"
#: The guest policy of every sim report: ABI 0.0, SMT allowed, reserved bit
#: 17 set, debug off.
GUEST_POLICY = 0x30000
#: The guest SVN of every sim Keep (no ID block).
GUEST_SVN = 0
#: HKDF salt of the sim's key derivation (the firmware's KDF is AMD's own;
#: the sim uses HKDF-SHA384, RFC 5869, over the same inputs).
KDF_LABEL = b"stockade sim PSP MSG_KEY_REQ v1"


class SimPsp:
    def __init__(self, chip: simchip.SimChip, measurement: bytes, host_data: bytes = bytes(32)) -> None:
        #: Reports signed so far (the keep manager counts them from the
        #: last line a PSP process writes to its log: SERVED_LINE).
        self.served = 0
        if len(measurement) != 48 or len(host_data) != 32:
            raise ValueError("measurement must be 48 bytes and host_data 32")
        self.chip = chip
        self.measurement = measurement
        self.host_data = host_data
        self.report_id = secrets.token_bytes(32)

    def report(self, request: ReportRequest) -> ReportResponse:
        tcb = self.chip.reported_tcb.raw
        major, minor, build = simchip.FIRMWARE
        fam, model, step = simchip.CPUID
        fields = ReportFields(
            version=3,
            policy=GUEST_POLICY,
            vmpl=request.vmpl,
            current_tcb=tcb,
            platform_info=0x1,  # SMT enabled
            key_info=0,  # signed by the VCEK
            report_data=request.report_data,
            measurement=self.measurement,
            host_data=self.host_data,
            report_id=self.report_id,
            reported_tcb=tcb,
            cpuid_fam_id=fam,
            cpuid_mod_id=model,
            cpuid_step=step,
            chip_id=self.chip.chip_id,
            committed_tcb=tcb,
            current_major=major,
            current_minor=minor,
            current_build=build,
            committed_major=major,
            committed_minor=minor,
            committed_build=build,
            launch_tcb=tcb,
        )
        unsigned = fields.unsigned_bytes()
        signature = self.chip.vcek_key.sign(unsigned[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(signature)
        return ReportResponse(
            report=with_signature(unsigned, r, s),
            certs=(
                ("ark", self.chip.ark_der),
                ("ask", self.chip.ask_der),
                ("vcek", self.chip.vcek_der),
            ),
        )

    def derive_key(self, request: KeyRequest) -> KeyResponse:
        """MSG_KEY_REQ (SEV-SNP Firmware ABI spec, pub. 56860): refuses what
        the firmware refuses (a VMRK this sim has not, a GUEST_SVN or
        TCB_VERSION above the guest's), then derives the key from the VCEK
        private key and every selected field, the request's own parameters
        included (another selection gives another key)."""
        if request.root_key_select != ROOT_VCEK:
            raise ProtocolError("the sim PSP has no VMRK (no migration agent): ask for the VCEK root")
        if request.guest_svn > GUEST_SVN:
            raise ProtocolError(
                f"key request GUEST_SVN {request.guest_svn} exceeds the guest's ({GUEST_SVN})"
            )
        committed = self.chip.reported_tcb.raw.to_bytes(8, "little")
        asked = request.tcb_version.to_bytes(8, "little")
        # Each byte of a TCB_VERSION is one component's SPL (or reserved):
        # none may exceed the committed TCB's ("Must not exceed CommittedTcb").
        if any(a > c for a, c in zip(asked, committed, strict=True)):
            raise ProtocolError("key request TCB_VERSION exceeds the committed TCB")
        selected = request.field_select
        mixed = struct.pack(
            "<IQIIQ",
            request.root_key_select,
            selected,
            request.vmpl,
            request.guest_svn,
            request.tcb_version,
        )
        if selected & FIELD_GUEST_POLICY:
            mixed += GUEST_POLICY.to_bytes(8, "little")
        if selected & FIELD_IMAGE_ID:
            mixed += bytes(16)
        if selected & FIELD_FAMILY_ID:
            mixed += bytes(16)
        if selected & FIELD_MEASUREMENT:
            mixed += self.measurement
        if selected & FIELD_GUEST_SVN:
            mixed += GUEST_SVN.to_bytes(4, "little")
        if selected & FIELD_TCB_VERSION:
            mixed += request.tcb_version.to_bytes(8, "little")
        root = self.chip.vcek_key.private_numbers().private_value.to_bytes(48, "big")
        key = HKDF(algorithm=hashes.SHA384(), length=DERIVED_KEY_SIZE, salt=KDF_LABEL, info=mixed).derive(
            root
        )
        return KeyResponse(key=key)

    def warm_up(self) -> None:
        """Run the signing path once with a throwaway key (issue 18): the
        first ECDSA P-384 signature of a fresh process or fork costs ~5 ms
        of one-time library set-up (OpenSSL's algorithm fetches and its
        random generator), which the Keep's first report then no longer
        waits for. Nothing of it is kept or sent: the key is generated
        here and dropped, the VCEK is not used, no report is made."""
        throwaway = ec.generate_private_key(ec.SECP384R1())
        throwaway.sign(bytes(SIGNED_SIZE), ec.ECDSA(hashes.SHA384()))
        ReportResponse(report=bytes(REPORT_SIZE), certs=(("vcek", self.chip.vcek_der),)).to_cbor()

    def serve(self, sock: socket.socket) -> None:
        """Answer requests until the Keep closes its end."""
        serve_reports(sock, self)


#: The generator point of P-384 (SEC 2 v2, section 2.5.1): a constant,
#: public point, so that :func:`fork_warm_up` has a public key without
#: making one.
P384_G = (
    0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
    0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F,
)


def fork_warm_up() -> None:
    """Run by the sim PSP's fork server before it forks (stockade.keep.zygote):
    OpenSSL's one-time fetches of P-384, ECDSA and SHA-384, which a forked
    PSP's first report would otherwise pay (~4 of its ~5 ms), with constant,
    public inputs only: no key is loaded or made, no randomness is drawn (an
    ECDSA verification of a non-signature, refused), nothing is kept
    (issue 18, ADR 0032)."""
    point = ec.EllipticCurvePublicNumbers(*P384_G, ec.SECP384R1()).public_key()
    with contextlib.suppress(InvalidSignature):
        point.verify(bytes.fromhex("3006020101020101"), bytes(SIGNED_SIZE), ec.ECDSA(hashes.SHA384()))


class ReportSigner(Protocol):
    """A sim PSP or sim QE: answers report requests, counts them."""

    served: int

    def report(self, request: ReportRequest) -> ReportResponse: ...


def serve_reports(sock: socket.socket, signer: ReportSigner, warm: bool = False) -> None:
    """Answer report requests (and, for the sim PSP, key requests) on
    ``sock`` until the Keep closes its end. ``warm``: first run the
    signer's ``warm_up`` (when it has one) unless a request is already
    waiting (a PSP process of its own, which idles until its Keep asks;
    not a PSP thread of a busy process)."""
    warm_up = getattr(signer, "warm_up", None)
    if warm and warm_up is not None and not _readable(sock):
        with contextlib.suppress(Exception):  # only a warm-up: the reports do not need it
            warm_up()
    decoder = FrameDecoder(max_frame=4096)
    while True:
        data = sock.recv(4096)
        if not data:
            return
        for frame in decoder.feed(data):
            try:
                if request_type(frame) == "key-req":
                    derive = getattr(signer, "derive_key", None)
                    if derive is None:
                        raise ProtocolError(
                            "this sim signer derives no keys (TDX offers no sealing key without a sealing service)"
                        )
                    reply = derive(KeyRequest.from_cbor(frame)).to_cbor()
                else:
                    reply = signer.report(ReportRequest.from_cbor(frame)).to_cbor()
                    signer.served += 1
            except StockadeError as exc:
                reply = error_response(str(exc))
            sock.sendall(encode_frame(reply))


def _readable(sock: socket.socket) -> bool:
    """Whether bytes (or the end) wait on ``sock`` now."""
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))


def signer_for(flavour: str, state: Path, measurement: bytes, host_data: bytes = bytes(32)) -> ReportSigner:
    """The sim PSP (``snp``) or the sim TDX QE (``tdx``) for one Keep."""
    if flavour == "tdx":
        from stockade.evidence.sim import tdx_chip

        return tdx_chip.SimQe(tdx_chip.load_tdx_chip(state), measurement)
    if flavour != "snp":
        raise ValueError(f"unknown sim flavour {flavour!r} (snp or tdx)")
    return SimPsp(simchip.load_chip(state), measurement, host_data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stockade-sim-psp", description=__doc__)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--fd", required=True, type=int)
    parser.add_argument("--measurement", required=True)
    parser.add_argument("--host-data", default="00" * 32)
    parser.add_argument("--flavour", choices=["snp", "tdx"], default="snp")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    psp: ReportSigner | None = None
    try:
        psp = signer_for(
            args.flavour, args.state, bytes.fromhex(args.measurement), bytes.fromhex(args.host_data)
        )
        serve_reports(sock, psp, warm=True)
    except (OSError, ValueError, StockadeError) as exc:
        print(f"sim PSP: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
        if psp is not None:
            print(SERVED_LINE.format(psp.served), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
