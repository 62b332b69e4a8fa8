"""The Keeps of one tenant across the hosts of a fleet (``stockade fleet
keeps``): each registered host's API asked with the tenant's token, a few
hosts at a time; a host that fails is an answer (its error), not a failure
of the whole listing.

The token goes to every URL the fleet names, under the same rules as
``--host`` (stockade.client.remote.ManagerClient: https verified against the
system CAs or ``cacert``; plain http only to loopback unless
``allow_insecure_http``). The fleet is untrusted: see docs/fleet.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from stockade.errors import StockadeError
from stockade.fleet.record import HostRecord

#: Hosts asked at once, and the time each may take.
PARALLEL: Final = 8
HOST_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class HostKeeps:
    """One host's answer: its Keep documents, or why it could not be asked."""

    host: HostRecord
    keeps: list[dict[Any, Any]] = field(default_factory=list)
    error: str = ""


def _ask(host: HostRecord, token: str, cacert: Path | None, allow_insecure_http: bool) -> HostKeeps:
    from stockade.client.remote import ManagerClient

    try:
        with ManagerClient(
            host.api_url,
            token,
            timeout=HOST_TIMEOUT_S,
            cacert=cacert,
            allow_insecure_http=allow_insecure_http,
        ) as client:
            return HostKeeps(host, client.list())
    except StockadeError as exc:  # this host's answer; the others are still listed
        return HostKeeps(host, error=exc.detail)


def keeps_across(
    hosts: Sequence[HostRecord], token: str, *, cacert: Path | None = None, allow_insecure_http: bool = False
) -> list[HostKeeps]:
    """Every host's Keeps for ``token``, in the order of ``hosts``."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(hosts))) as pool:
        return list(pool.map(lambda h: _ask(h, token, cacert, allow_insecure_http), hosts))
