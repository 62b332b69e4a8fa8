"""The local collateral store: ``<state dir>/collateral`` (or ``--cache
DIR``), filled by ``stockade collateral fetch``, read by deploys, listed and
pruned by ``stockade collateral ls|prune``, and served read-only by a keep
manager to its clients (host pre-provisioning).

Layout (every name is a :func:`stockade.wire.collateral.valid_name`)::

    intel/<tee>/<FMSPC>/tcb_info.json          PCS TCB info body
    intel/<tee>/<FMSPC>/tcb_info.json.issuer_chain.pem
    intel/<tee>/qe_identity.json               PCS QE identity body
    intel/<tee>/qe_identity.json.issuer_chain.pem
    intel/pck_crl_<platform|processor>.der     PCK CRL
    intel/pck_crl_<ca>.der.issuer_chain.pem
    intel/root_ca_crl.der                      Intel SGX Root CA CRL
    snp/<Product>/vcek/<hwID hex>/<TCB hex>.der  a chip's VCEK at one TCB
    snp/<Product>/<vcek|vlek>/cert_chain.pem   ASK (ASVK) then ARK
    snp/<Product>/<vcek|vlek>/crl.der          the ARK's CRL

``intel/`` is exactly :class:`stockade.evidence.intel.collateral.PcsClient`'s
cache (a deploy's ``<state dir>/collateral/intel``). Writes go through the
one cache (evidence/collateral.py: atomic, private directory).

Nothing here trusts what it stores: fetching checks only that a body parses
as what its endpoint serves; verification checks signatures, chains and
validity windows at use, whether the collateral came from AMD, Intel, a
mirror or a host that pre-provisioned it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from stockade.errors import CollateralUnavailable, MalformedEvidence
from stockade.evidence.collateral import CollateralCache
from stockade.wire.collateral import MAX_FILE_BYTES, MAX_FILES, valid_name

if TYPE_CHECKING:
    from stockade.evidence.intel.collateral import CollateralKey
    from stockade.evidence.snp.abi import Product, SigningKey, TcbVersion
    from stockade.evidence.snp.collateral import KdsFetcher, SnpCollateral

#: Progress callback: one line per step.
Progress = Callable[[str], None]


def _quiet(line: str) -> None:
    del line


@dataclass(frozen=True)
class Entry:
    """One file of the store, as ``ls`` shows it. ``issued``/``next_update``:
    a CRL's thisUpdate/nextUpdate, TCB info's and QE identity's
    issueDate/nextUpdate, a certificate's (chain's) notBefore/notAfter
    (earliest notAfter of a chain). ``kind`` "unreadable" for a file that
    does not parse as what its name says."""

    name: str
    kind: str
    key: str
    issued: datetime | None
    next_update: datetime | None
    size: int
    problem: str = ""

    def expired(self, at: datetime) -> bool | None:
        """Past its next update (a certificate: past notAfter) at ``at``;
        None when unreadable."""
        if self.kind == "unreadable" or self.next_update is None:
            return None
        return self.next_update <= at

    def to_json(self, at: datetime) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "key": self.key,
            "issued": None if self.issued is None else self.issued.isoformat(),
            "next_update": None if self.next_update is None else self.next_update.isoformat(),
            "expired": self.expired(at),
            "size": self.size,
            **({"problem": self.problem} if self.problem else {}),
        }


def _cn(name: x509.Name) -> str:
    found = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(found[0].value) if found else name.rfc4514_string()


def describe(name: str, data: bytes) -> Entry:
    """Parse ``data`` as the collateral its store ``name`` says it is (never
    verifying a signature); an "unreadable" entry when it does not parse."""
    from stockade.evidence.intel.tcbinfo import parse_enclave_identity, parse_tcb_info, split_signed_body
    from stockade.evidence.pki import load_crl, load_der, load_pem_chain

    parts = name.split("/")
    leaf = parts[-1]
    try:
        if leaf.endswith(".pem"):
            certs = load_pem_chain(data, name)
            if not certs:
                raise MalformedEvidence(f"{name}: no certificate")
            kind = "issuer-chain" if leaf.endswith(".issuer_chain.pem") else "cert-chain"
            key = " > ".join(_cn(c.subject) for c in certs)
            return Entry(
                name,
                kind,
                key,
                max(c.not_valid_before_utc for c in certs),
                min(c.not_valid_after_utc for c in certs),
                len(data),
            )
        if leaf in ("crl.der", "root_ca_crl.der") or (leaf.startswith("pck_crl_") and leaf.endswith(".der")):
            crl = load_crl(data, name)
            return Entry(name, "crl", _cn(crl.issuer), crl.this_update, crl.next_update, len(data))
        if leaf == "tcb_info.json":
            info = parse_tcb_info(split_signed_body(data, "tcbInfo", "TCB info").value)
            key = f"{info.id} FMSPC {info.fmspc.hex().upper()}"
            return Entry(name, "tcb-info", key, info.issue_date, info.next_update, len(data))
        if leaf == "qe_identity.json":
            ident = parse_enclave_identity(split_signed_body(data, "enclaveIdentity", "QE identity").value)
            return Entry(name, "qe-identity", ident.id, ident.issue_date, ident.next_update, len(data))
        if len(parts) == 5 and parts[0] == "snp" and parts[2] == "vcek" and leaf.endswith(".der"):
            cert = load_der(data, name)
            key = f"{_cn(cert.subject)} hwID {parts[3][:16]}… TCB {leaf.removesuffix('.der')}"
            return Entry(name, "vcek", key, cert.not_valid_before_utc, cert.not_valid_after_utc, len(data))
    except MalformedEvidence as exc:
        return Entry(name, "unreadable", "", None, None, len(data), exc.detail)
    except (ValueError, json.JSONDecodeError) as exc:  # defensive: parsers raise MalformedEvidence
        return Entry(name, "unreadable", "", None, None, len(data), str(exc))
    return Entry(name, "unreadable", "", None, None, len(data), "not a collateral file name")


class CollateralStore:
    """The store under ``root`` (module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cache = CollateralCache(self.root)

    # --- files ---------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every regular file with a valid name (symlinks and temporary
        files are left out), sorted; at most MAX_FILES."""
        found: list[str] = []
        if not self.root.is_dir():
            return found
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
            for fn in sorted(filenames):
                path = Path(dirpath) / fn
                name = path.relative_to(self.root).as_posix()
                if valid_name(name) and not path.is_symlink() and path.is_file():
                    found.append(name)
                    if len(found) >= MAX_FILES:
                        return sorted(found)
        return sorted(found)

    def read(self, name: str) -> bytes:
        if not valid_name(name):
            raise CollateralUnavailable(f"{name!r} is not a collateral file name")
        data = self.cache.get(name)
        if data is None:
            raise CollateralUnavailable(f"{self.root / name} is not in the collateral store")
        return data

    def put(self, name: str, data: bytes) -> None:
        if not valid_name(name):
            raise CollateralUnavailable(f"refusing to store {name!r}: not a collateral file name")
        if len(data) > MAX_FILE_BYTES:
            raise CollateralUnavailable(f"refusing to store {name}: {len(data)} bytes, over {MAX_FILE_BYTES}")
        self.cache.put(name, data)

    def entries(self) -> Iterator[Entry]:
        for name in self.names():
            data = self.cache.get(name)
            if data is not None:
                yield describe(name, data)

    def prune(self, at: datetime, everything: bool = False) -> list[Entry]:
        """Remove expired and unreadable entries (``everything``: all);
        return what was removed."""
        removed = []
        for entry in list(self.entries()):
            if everything or entry.expired(at) is not False:
                self.cache.discard(entry.name)
                removed.append(entry)
        return removed

    # --- SEV-SNP ---------------------------------------------------------------------

    @staticmethod
    def vcek_name(product: Product, hwid: bytes, tcb: TcbVersion) -> str:
        return f"snp/{product.value}/vcek/{hwid.hex()}/{tcb.hex()}.der"

    @staticmethod
    def chain_name(product: Product, signer: SigningKey) -> str:
        return f"snp/{product.value}/{signer.name.lower()}/cert_chain.pem"

    @staticmethod
    def crl_name(product: Product, signer: SigningKey) -> str:
        return f"snp/{product.value}/{signer.name.lower()}/crl.der"

    def fetch_snp(
        self,
        kds: KdsFetcher,
        product: Product,
        signer: SigningKey,
        *,
        hwid: bytes | None = None,
        tcb: TcbVersion | None = None,
        with_crl: bool = True,
        progress: Progress = _quiet,
    ) -> list[str]:
        """Fetch from ``kds`` into the store: the VCEK of ``hwid`` at ``tcb``
        (when given), the chain of ``signer``'s kind and its CRL. Returns the
        names stored."""
        from stockade.evidence.pki import load_crl, load_der
        from stockade.evidence.snp.collateral import cert_chain_url, crl_url, split_cert_chain, vcek_url

        def check_der(data: bytes) -> None:
            load_der(data, "VCEK")

        def check_crl(data: bytes) -> None:
            load_crl(data, "CRL")

        plan: list[tuple[str, str, Callable[[bytes], Any], str]] = []
        if hwid is not None and tcb is not None:
            url = vcek_url(product, hwid, tcb, base_url=kds.base_url)
            plan.append((self.vcek_name(product, hwid, tcb), url, check_der, "a DER certificate"))
        plan.append(
            (
                self.chain_name(product, signer),
                cert_chain_url(product, signer, base_url=kds.base_url),
                split_cert_chain,
                "a PEM certificate chain",
            )
        )
        if with_crl:
            plan.append(
                (
                    self.crl_name(product, signer),
                    crl_url(product, signer, base_url=kds.base_url),
                    check_crl,
                    "a DER CRL",
                )
            )
        stored = []
        for name, url, check, what in plan:
            progress(f"GET {url}")
            body = kds.get(url)
            try:
                check(body)
            except MalformedEvidence as exc:
                raise CollateralUnavailable(
                    f"{url}: HTTP 200 but the body is not {what} ({exc.detail})"
                ) from None
            self.put(name, body)
            stored.append(name)
        return stored

    def fetch_snp_for_report(
        self,
        kds: KdsFetcher,
        report: bytes,
        product_hint: Product | None = None,
        *,
        with_crl: bool = True,
        progress: Progress = _quiet,
    ) -> list[str]:
        """What an SEV-SNP report needs: its VCEK (a VLEK comes with the
        evidence), the chain of its signer kind and the CRL."""
        from stockade.evidence.snp.abi import AttestationReport, SigningKey
        from stockade.evidence.snp.collateral import vcek_url_for_report
        from stockade.evidence.snp.verify import HWID_LENGTH

        parsed = AttestationReport.from_bytes(report)
        if parsed.signing_key not in (SigningKey.VCEK, SigningKey.VLEK):
            raise CollateralUnavailable("the report is unsigned; there is no collateral for it")
        product = parsed.product(product_hint)
        hwid = tcb = None
        if parsed.signing_key is SigningKey.VCEK:
            vcek_url_for_report(
                parsed, product
            )  # the same refusals as a deploy's fetch (masked CHIP_ID, ...)
            hwid, tcb = parsed.chip_id[: HWID_LENGTH[product]], parsed.reported_tcb
        return self.fetch_snp(
            kds, product, parsed.signing_key, hwid=hwid, tcb=tcb, with_crl=with_crl, progress=progress
        )

    def snp_collateral(self, report: bytes, product_hint: Product | None = None) -> SnpCollateral:
        """The stored collateral of an SEV-SNP report, for verification
        (which checks all of it): CollateralUnavailable names what is
        missing. The CRL is None when none is stored."""
        from stockade.evidence.snp.abi import AttestationReport, SigningKey
        from stockade.evidence.snp.collateral import SnpCollateral, split_cert_chain
        from stockade.evidence.snp.verify import HWID_LENGTH

        parsed = AttestationReport.from_bytes(report)
        product = parsed.product(product_hint)
        endorsement = None
        if parsed.signing_key is SigningKey.VCEK:
            hwid = parsed.chip_id[: HWID_LENGTH[product]]
            endorsement = self.read(self.vcek_name(product, hwid, parsed.reported_tcb))
        chain = self.read(self.chain_name(product, parsed.signing_key))
        intermediate, ark = split_cert_chain(chain, self.chain_name(product, parsed.signing_key))
        crl = self.cache.get(self.crl_name(product, parsed.signing_key))
        return SnpCollateral(endorsement=endorsement, intermediate=intermediate, ark=ark, crl=crl)

    # --- Intel -----------------------------------------------------------------------

    @property
    def intel_dir(self) -> Path:
        return self.root / "intel"

    def fetch_intel(
        self,
        key: CollateralKey,
        at: datetime,
        *,
        pcs_url: str | None = None,
        root_crl_url: str | None = None,
        retries: int = 0,
        timeout: float = 10.0,
        progress: Progress = _quiet,
    ) -> list[str]:
        """TCB info for the FMSPC, QE identity, PCK CRL of the CA and root
        CA CRL through :class:`PcsClient` (which serves what is still fresh
        at ``at`` from the store). Returns the names of the store's Intel
        files for ``key``."""
        from stockade.evidence.intel.collateral import PCS_URL, ROOT_CRL_URL, PcsClient

        base = pcs_url or PCS_URL
        client = PcsClient(
            self.intel_dir,
            base_url=base,
            root_crl_url=root_crl_url or ROOT_CRL_URL,
            retries=retries,
            timeout=timeout,
        )
        progress(f"{key.tee.upper()} FMSPC {key.fmspc.upper()}, PCK {key.ca} CA: {client.base_url}")
        client.collateral(key, at)
        fmspc = key.fmspc.upper()
        return [
            f"intel/{key.tee}/{fmspc}/tcb_info.json",
            f"intel/{key.tee}/qe_identity.json",
            f"intel/pck_crl_{key.ca}.der",
            "intel/root_ca_crl.der",
        ]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


__all__ = ["CollateralStore", "Entry", "describe", "sha256"]
