"""Keep side of the sim backend: ask the sim PSP for a report.

The counterpart of reading /dev/sev-guest or configfs-tsm on real SNP: the
Keep sends 64 bytes of report data over its inherited PSP socket and gets the
signed report plus the certificate table (VCEK, ASK, ARK).
"""

from __future__ import annotations

import socket

from stockade.errors import ProtocolError
from stockade.evidence.sim.channel import ReportRequest, ReportResponse
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.framing import FrameDecoder, encode_frame
from stockade.wire.platform import Platform


class SimAttester:
    platform = Platform.SIM.value

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = FrameDecoder(max_frame=1 << 20)

    def evidence(self, report_data: bytes) -> EvidenceBundle:
        self._sock.sendall(encode_frame(ReportRequest(report_data=report_data).to_cbor()))
        while True:
            data = self._sock.recv(65536)
            if not data:
                raise ProtocolError("the sim PSP closed its channel without answering")
            frames = self._decoder.feed(data)
            if frames:
                response = ReportResponse.from_cbor(frames[0])
                return EvidenceBundle(
                    platform=Platform.SIM.value, report=response.report, certs=response.certs
                )
