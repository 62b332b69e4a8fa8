"""Keep side of the sim backend: ask the sim PSP for a report.

The counterpart of reading /dev/sev-guest or configfs-tsm on real SNP: the
Keep sends 64 bytes of report data over its inherited PSP socket and gets the
signed report plus the certificate table (VCEK, ASK, ARK). For the sim-tdx
backend the host-side end is the sim TDX QE instead: the same request gets
a TDX v4 quote and its collateral (stockade.evidence.sim.tdx_chip), which
this attester labels platform "sim-tdx".
"""

from __future__ import annotations

import socket

from stockade.errors import ProtocolError
from stockade.evidence.sim.channel import KeyRequest, KeyResponse, ReportRequest, ReportResponse
from stockade.evidence.snp.abi import SEALING_FIELDS, AttestationReport
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.framing import FrameDecoder, encode_frame

#: Keep backend -> evidence platform of its bundles.
BUNDLE_PLATFORM = {"sim": "sim", "sim-snp": "sim", "sim-tdx": "sim-tdx"}


class SimAttester:
    def __init__(self, sock: socket.socket, backend: str = "sim") -> None:
        self.platform = BUNDLE_PLATFORM[backend]
        self._sock = sock
        self._decoder = FrameDecoder(max_frame=1 << 20)
        self._report: bytes | None = None

    def _ask(self, request: bytes) -> bytes:
        self._sock.sendall(encode_frame(request))
        while True:
            data = self._sock.recv(65536)
            if not data:
                raise ProtocolError("the sim PSP closed its channel without answering")
            frames = self._decoder.feed(data)
            if frames:
                return frames[0]

    def evidence(self, report_data: bytes) -> EvidenceBundle:
        response = ReportResponse.from_cbor(self._ask(ReportRequest(report_data=report_data).to_cbor()))
        self._report = response.report
        return EvidenceBundle(platform=self.platform, report=response.report, certs=response.certs)

    def sealing_key(self) -> bytes | None:
        """The Keep's sealing key (MSG_KEY_REQ to the sim PSP: VCEK root,
        SEALING_FIELDS, the committed TCB of this Keep's first report), or
        None where there is none: the sim TDX QE (TDX has no sealing key
        without a sealing service), or before any report."""
        if self.platform != "sim" or self._report is None:
            return None
        tcb = AttestationReport.from_bytes(self._report).committed_tcb.raw
        request = KeyRequest(field_select=SEALING_FIELDS, tcb_version=tcb)
        return KeyResponse.from_cbor(self._ask(request.to_cbor())).key
