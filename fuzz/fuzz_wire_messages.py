"""atheris harness: a deploy-protocol message (CBOR) -> stockade.wire.messages.decode."""

from __future__ import annotations

from _common import Loaded, main


def load() -> Loaded:
    from stockade.errors import ProtocolError
    from stockade.wire.messages import decode

    return decode, (ProtocolError,)


if __name__ == "__main__":
    main(load)
