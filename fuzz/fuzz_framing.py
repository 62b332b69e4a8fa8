"""atheris harness: a byte stream cut at every 7th byte -> FrameDecoder, each
frame -> decode (what the client and the Keep do with decrypted TLS data)."""

from __future__ import annotations

from _common import Loaded, main


def load() -> Loaded:
    from stockade.errors import ProtocolError
    from stockade.wire.framing import FrameDecoder
    from stockade.wire.messages import decode

    def target(data: bytes) -> None:
        decoder = FrameDecoder(max_frame=1 << 16)
        for i in range(0, len(data), 7):
            for frame in decoder.feed(data[i : i + 7]):
                decode(frame)

    return target, (ProtocolError,)


if __name__ == "__main__":
    main(load)
