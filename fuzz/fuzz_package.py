"""atheris harness: package bytes (staged by the host, or a user's file) ->
stockade.package.format.Package.from_bytes."""

from __future__ import annotations

from _common import Loaded, main


def load() -> Loaded:
    from stockade.errors import WorkloadRejected
    from stockade.package.format import Package

    return Package.from_bytes, (WorkloadRejected,)


if __name__ == "__main__":
    main(load)
