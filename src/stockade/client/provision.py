"""Collateral pre-provisioned by a keep manager: ``stockade collateral fetch
--from-host URL`` copies the files a host serves (GET /v1/collateral) into
the local collateral store.

The host is untrusted. Each file must have a valid store name
(stockade.wire.collateral), the size and SHA-256 the listing announced (a
transfer check, not a reason to trust it) and parse as the collateral its
name says (a CRL, TCB info, a certificate chain...); otherwise it is refused
and nothing is written for it. What is written is verified (signatures,
chains, validity) only when a verification uses it, like collateral fetched
from AMD or Intel. A local file is replaced only when the host's copy has a
later next update (a host cannot roll the store back to older collateral).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stockade.errors import CollateralUnavailable
from stockade.wire.collateral import MAX_FILE_BYTES, MAX_FILES, valid_name

if TYPE_CHECKING:
    from stockade.client.remote import ManagerClient
    from stockade.evidence.store import CollateralStore, Entry


@dataclass(frozen=True)
class Pulled:
    entry: Entry
    #: "stored", "replaced" or "kept" (the local copy is as new or newer).
    action: str


def pull_from_host(
    client: ManagerClient, store: CollateralStore, progress: Callable[[str], None] = lambda _: None
) -> list[Pulled]:
    """Copy the host's collateral into ``store`` (module docstring)."""
    from stockade.evidence.store import describe

    listing = client.collateral_list()
    if len(listing) > MAX_FILES:
        raise CollateralUnavailable(f"the host lists {len(listing)} collateral files, more than {MAX_FILES}")
    pulled = []
    for name, size, digest in listing:
        if not valid_name(name):
            raise CollateralUnavailable(
                f"the host serves a collateral file with an invalid name ({name[:80]!r})"
            )
        if not 0 <= size <= MAX_FILE_BYTES:
            raise CollateralUnavailable(
                f"the host lists {name} with size {size}, over {MAX_FILE_BYTES} bytes"
            )
        progress(f"GET /v1/collateral/{name}")
        data = client.collateral_file(name)
        if len(data) != size or hashlib.sha256(data).digest() != digest:
            raise CollateralUnavailable(f"the host's {name} does not match its listing (size or SHA-256)")
        entry = describe(name, data)
        if entry.kind == "unreadable":
            raise CollateralUnavailable(f"the host's {name} is not collateral: {entry.problem}")
        local = store.cache.get(name)
        action = "stored"
        if local is not None:
            mine = describe(name, local)
            newer_here = (
                mine.kind != "unreadable"
                and mine.next_update is not None
                and entry.next_update is not None
                and mine.next_update >= entry.next_update
            )
            if newer_here:
                pulled.append(Pulled(mine, "kept"))
                continue
            action = "replaced"
        store.put(name, data)
        pulled.append(Pulled(entry, action))
    return pulled


__all__ = ["Pulled", "pull_from_host"]
