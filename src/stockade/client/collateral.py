"""Where a deploy gets the Intel collateral for a Keep's TDX or SGX quote.

A TDX/SGX quote verifies only with collateral (TCB info, QE identity, the
TCB signing chain, and for revocation the root CA and PCK CRLs), which the
quote does not carry. In ``run`` and ``deploy`` the client gets it from:

* ``--collateral DIR``: the layout ``stockade evidence verify --collateral``
  reads (``tcb_info.json``, ``qe_identity.json``, ``tcb_signing_chain.pem``,
  ``root_ca_crl.der``, ``pck_crl.der``, ``pck_crl_issuer_chain.pem``;
  :func:`stockade.evidence.intel.collateral.load_collateral_dir`); or
* the local collateral cache, ``<state dir>/collateral/intel`` (the
  :class:`~stockade.evidence.intel.collateral.PcsClient` layout:
  ``<tee>/<FMSPC>/tcb_info.json``, ``<tee>/qe_identity.json``,
  ``pck_crl_<ca>.der``, ``root_ca_crl.der``), filled ahead of time by
  ``stockade collateral fetch`` or, unless ``--offline``, fetched from Intel
  PCS on first need.

Collateral is untrusted wherever it comes from (a host may pre-provision
it): verification checks its signatures up to the Intel root at
verification time. When something is missing, CollateralUnavailable (exit
114) names what and how to get it. sim-tdx evidence carries its own
(sim-signed) collateral and does not come here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from stockade.errors import CollateralUnavailable

if TYPE_CHECKING:
    from stockade.evidence.intel.verify import Collateral

#: Where the Intel collateral cache lives under the state directory.
INTEL_CACHE = ("collateral", "intel")


def intel_cache_dir(state_dir: Path) -> Path:
    return state_dir.joinpath(*INTEL_CACHE)


def intel_source(
    collateral_dir: Path | None, state_dir: Path, offline: bool
) -> Callable[[bytes, datetime], Collateral]:
    """A function giving the Intel collateral for a quote at a time: read
    from ``collateral_dir`` if given, else from the cache under
    ``state_dir`` (fetched from Intel PCS when missing or stale, unless
    ``offline``)."""

    def from_dir(quote: bytes, at: datetime) -> Collateral:
        from stockade.evidence.intel.collateral import load_collateral_dir

        assert collateral_dir is not None
        if not collateral_dir.is_dir():
            raise CollateralUnavailable(f"--collateral {collateral_dir} is not a directory")
        try:
            return load_collateral_dir(collateral_dir)
        except CollateralUnavailable as exc:
            raise CollateralUnavailable(
                f"{exc.detail} (the TDX/SGX quote needs tcb_info.json, qe_identity.json and "
                "tcb_signing_chain.pem; `stockade collateral fetch` gets them from Intel PCS)"
            ) from None

    def from_cache(quote: bytes, at: datetime) -> Collateral:
        from stockade.evidence.intel.collateral import CollateralKey, PcsClient

        key = CollateralKey.for_quote(quote)
        cache = intel_cache_dir(state_dir)
        try:
            return PcsClient(cache).collateral(key, at, offline=offline)
        except CollateralUnavailable as exc:
            how = (
                "fetching is off (--offline): fill the cache with `stockade collateral fetch` "
                "or pass --collateral DIR"
                if offline
                else "pass --collateral DIR, or fetch it ahead of time with `stockade collateral fetch`"
            )
            raise CollateralUnavailable(
                f"no usable Intel collateral for the Keep's {key.tee.upper()} quote (FMSPC {key.fmspc.upper()}, "
                f"PCK {key.ca} CA) in {cache}: {exc.detail}; {how}"
            ) from None

    return from_dir if collateral_dir is not None else from_cache
