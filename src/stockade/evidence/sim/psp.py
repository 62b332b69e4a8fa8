"""The sim PSP: a host-side process that signs SNP reports for one Keep.

Started by the keep loader next to each sim Keep, with one end of a socket
pair (the Keep holds the other end, as a guest holds /dev/sev-guest) and the
launch digest of the Keep it serves (the loader computed it, as a hypervisor
feeds launch pages to the real PSP). It answers report requests with a
byte-exact ATTESTATION_REPORT version 3 signed by the sim VCEK. The VCEK
private key lives only in this process and the state directory, never in
the Keep.

With ``--flavour tdx`` the same process is the sim TDX QE instead
(:class:`stockade.evidence.sim.tdx_chip.SimQe`): it answers the same
report requests with a TDX v4 quote and its collateral (backend sim-tdx).

Usage: python -m stockade.evidence.sim.psp --state DIR --fd N --measurement HEX [--flavour snp|tdx]
"""

from __future__ import annotations

import argparse
import secrets
import socket
import sys
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from stockade.errors import StockadeError
from stockade.evidence.sim import chip as simchip
from stockade.evidence.sim.channel import ReportRequest, ReportResponse, error_response
from stockade.evidence.snp.abi import SIGNED_SIZE, ReportFields, with_signature
from stockade.wire.framing import FrameDecoder, encode_frame

#: The last line a sim PSP process logs; the keep manager parses it.
SERVED_LINE = "sim PSP: served {} report(s)"


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
            policy=0x30000,  # ABI 0.0, SMT allowed, reserved bit 17 set, debug off
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

    def serve(self, sock: socket.socket) -> None:
        """Answer requests until the Keep closes its end."""
        serve_reports(sock, self)


class ReportSigner(Protocol):
    """A sim PSP or sim QE: answers report requests, counts them."""

    served: int

    def report(self, request: ReportRequest) -> ReportResponse: ...


def serve_reports(sock: socket.socket, signer: ReportSigner) -> None:
    """Answer report requests on ``sock`` until the Keep closes its end."""
    decoder = FrameDecoder(max_frame=4096)
    while True:
        data = sock.recv(4096)
        if not data:
            return
        for frame in decoder.feed(data):
            try:
                reply = signer.report(ReportRequest.from_cbor(frame)).to_cbor()
                signer.served += 1
            except StockadeError as exc:
                reply = error_response(str(exc))
            sock.sendall(encode_frame(reply))


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
        serve_reports(sock, psp)
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
