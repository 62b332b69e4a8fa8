"""atheris harness: what a Keep sends after the load request ->
ClientSession.receive (the client's protocol state machine)."""

from __future__ import annotations

from _common import Loaded, main


def load() -> Loaded:
    from stockade.binding.reportdata import report_data_for
    from stockade.errors import ProtocolError
    from stockade.wire.messages import Config, Load
    from stockade.wire.protocol import ClientSession

    def target(data: bytes) -> None:
        session = ClientSession()
        session.hello(bytes(32))
        session.evidence_verified(report_data_for(bytes(32), b"spki"), b"spki")
        session.load(Load(package=b"p", staged=False, config=Config(), nonce=bytes(32)))
        half = len(data) // 2
        session.receive(data[:half])
        session.receive(data[half:])

    return target, (ProtocolError,)


if __name__ == "__main__":
    main(load)
