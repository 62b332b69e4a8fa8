"""Keep runtime entry point, started by a keep loader (never by users).

    python -I -m stockade.keep --conn-fd N --backend sim --psp-fd M

``--conn-fd`` is the byte stream to the client (through the host);
``--psp-fd`` the sim backend's channel to its PSP. No secret is ever passed
on this command line or in the environment: secrets arrive only inside the
attested TLS channel.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from stockade.keep import guard

    guard.install()  # first: only measured modules may be imported (ADR 0013)
    parser = argparse.ArgumentParser(prog="stockade-keep")
    parser.add_argument("--conn-fd", type=int, required=True)
    parser.add_argument("--backend", choices=["sim"], required=True)
    parser.add_argument("--psp-fd", type=int)
    parser.add_argument("--scratch", type=Path)
    args = parser.parse_args(argv)

    from stockade.keep.runner import make_engine
    from stockade.keep.session import serve, warm_engine

    engine = warm_engine(make_engine)
    if args.psp_fd is None:
        parser.error("--backend sim needs --psp-fd")
    from stockade.evidence.sim.attester import SimAttester

    attester = SimAttester(socket.socket(fileno=args.psp_fd))
    return serve(socket.socket(fileno=args.conn_fd), attester, engine, args.scratch)


if __name__ == "__main__":
    code = main()
    # A Keep serves one session; skip interpreter teardown (wasmtime, OpenSSL)
    # so the host and the client are not kept waiting.
    sys.stderr.flush()
    os._exit(code)
