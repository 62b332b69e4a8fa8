"""atheris harness: an Intel DCAP quote (TDX or SGX) -> Quote.from_bytes,
strict and with trailing bytes allowed."""

from __future__ import annotations

import contextlib

from _common import Loaded, main


def load() -> Loaded:
    from stockade.errors import MalformedEvidence
    from stockade.evidence.intel.abi import Quote

    def target(data: bytes) -> None:
        with contextlib.suppress(MalformedEvidence):
            Quote.from_bytes(data)
        Quote.from_bytes(data, allow_trailing=True)

    return target, (MalformedEvidence,)


if __name__ == "__main__":
    main(load)
