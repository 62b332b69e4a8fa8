"""``stockade collateral fetch|ls|prune``: fill and inspect the local
collateral store ahead of a deploy (the counterpart of ``enarx platform snp
vcek`` and ``enarx platform sgx crl|tcb``).

The store is ``<state dir>/collateral`` (``--cache DIR`` elsewhere); its
layout is stockade.evidence.store's, and its ``intel/`` part is the cache a
deploy reads. ``fetch`` works out what a piece of evidence needs (SEV-SNP:
the VCEK for its CHIP_ID and REPORTED_TCB, the ASK/ASVK+ARK chain, the CRL;
TDX/SGX: TCB info for its FMSPC, QE identity, PCK CRL, root CA CRL) or takes
explicit selectors, and fetches from AMD KDS / Intel PCS (``--kds-url`` /
``--pcs-url`` for a mirror), or copies what a keep manager pre-provisioned
(``--from-host URL``). Progress goes to stderr; an HTTP failure is one line
naming the URL, exit 114.

Nothing is trusted for having been fetched: a deploy or ``evidence verify``
checks every signature, chain and validity window at use.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stockade.commands._output import json_option, safe_text
from stockade.errors import UsageError

if TYPE_CHECKING:
    from stockade.evidence.snp.abi import Product, TcbVersion
    from stockade.evidence.store import CollateralStore, Entry

_TCB_NAMES = {"bl": "bootloader", "bootloader": "bootloader", "tee": "tee", "snp": "snp"}
_TCB_NAMES.update({"ucode": "microcode", "microcode": "microcode", "fmc": "fmc"})


def _store(cache: Path | None, state_dir: Path | None) -> CollateralStore:
    from stockade.client.plan import state_dir as default_state_dir
    from stockade.evidence.store import CollateralStore

    if cache is not None and state_dir is not None:
        raise UsageError("give --cache or --state-dir, not both")
    return CollateralStore(cache if cache is not None else default_state_dir(state_dir) / "collateral")


def _cache_options(fn: Any) -> Any:
    fn = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="State directory whose collateral/ is the store (default: $STOCKADE_STATE_DIR or "
        "~/.local/state/stockade); a keep manager serves its state directory's.",
    )(fn)
    return click.option(
        "--cache",
        type=click.Path(file_okay=False, path_type=Path),
        metavar="DIR",
        help="Collateral store directory (default: <state dir>/collateral).",
    )(fn)


def _at_option(fn: Any) -> Any:
    return click.option(
        "--at",
        "at_text",
        metavar="TIME",
        help="Judge freshness and expiry at this time, ISO 8601 (default: now).",
    )(fn)


def _product(text: str) -> Product:
    from stockade.evidence.snp.abi import Product

    return Product(text.capitalize())


def _parse_tcb(text: str, product: Product) -> TcbVersion:
    """REPORTED_TCB as 16 hex digits (report byte order) or components
    ``bl=4,tee=0,snp=24,ucode=219[,fmc=N]``."""
    from stockade.evidence.snp.abi import Product, TcbVersion

    compact = text.strip().removeprefix("0x")
    if len(compact) == 16 and all(c in "0123456789abcdefABCDEF" for c in compact):
        tcb = TcbVersion(int.from_bytes(bytes.fromhex(compact), "little"))
    else:
        parts: dict[str, int] = {}
        for item in filter(None, text.split(",")):
            key, sep, value = item.partition("=")
            name = _TCB_NAMES.get(key.strip().lower())
            if not sep or name is None or not value.strip().isdigit() or int(value) > 255:
                raise UsageError(
                    f"--tcb {text!r}: expected 16 hex digits or bl=N,tee=N,snp=N,ucode=N (Turin: also fmc=N), "
                    "each 0-255"
                )
            parts[name] = int(value)
        needed = {"bootloader", "tee", "snp", "microcode"} | ({"fmc"} if product is Product.TURIN else set())
        missing = sorted(needed - set(parts))
        if missing or set(parts) - needed:
            raise UsageError(
                f"--tcb {text!r}: a {product.value} TCB has exactly "
                f"{', '.join(sorted(needed))}" + (f" (missing {', '.join(missing)})" if missing else "")
            )
        tcb = TcbVersion.from_components(product, **parts)
    if not tcb.reserved_ok(product):
        raise UsageError(f"--tcb {text!r}: non-zero reserved bytes for {product.value}")
    return tcb


def _fmt(when: datetime | None) -> str:
    return "-" if when is None else when.strftime("%Y-%m-%d %H:%M")


def _print_entries(entries: list[Entry], at: datetime, title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for column in ("kind", "key", "issued", "next update", "expired", "name"):
        table.add_column(column, overflow="fold")
    for e in entries:
        expired = e.expired(at)
        mark = "?" if expired is None else "yes" if expired else "no"
        key = e.key or e.problem
        table.add_row(
            *(Text(safe_text(v)) for v in (e.kind, key, _fmt(e.issued), _fmt(e.next_update), mark, e.name))
        )
    Console(highlight=False).print(table)


@click.group()
def collateral() -> None:
    """Fetch, list and prune the local collateral store (VCEKs, chains, CRLs,
    TCB info, QE identity). Collateral is verified when it is used, never
    trusted for having been fetched."""


@collateral.command()
@click.argument("evidence", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_cache_options
@click.option(
    "--snp-product",
    type=click.Choice(["milan", "genoa", "turin"], case_sensitive=False),
    help="SEV-SNP product: the selector (with --chip-id/--tcb or --vlek), or the hint for a v2 report.",
)
@click.option("--chip-id", metavar="HEX", help="SEV-SNP: CHIP_ID (hwID) whose VCEK to fetch.")
@click.option(
    "--tcb", metavar="TCB", help="SEV-SNP: REPORTED_TCB (16 hex digits, or bl=N,tee=N,snp=N,ucode=N)."
)
@click.option(
    "--vlek", is_flag=True, help="SEV-SNP: the VLEK chain (ASVK+ARK) and CRL instead of the VCEK's."
)
@click.option("--no-crl", is_flag=True, help="SEV-SNP: do not fetch the CRL.")
@click.option("--fmspc", metavar="HEX", help="TDX/SGX: the platform's FMSPC (6 bytes, 12 hex digits).")
@click.option("--tdx", "tee", flag_value="tdx", help="With --fmspc: TDX collateral.")
@click.option("--sgx", "tee", flag_value="sgx", help="With --fmspc: SGX collateral.")
@click.option(
    "--pck-ca",
    type=click.Choice(["platform", "processor"]),
    default="platform",
    show_default=True,
    help="With --fmspc: the PCK CA whose CRL to fetch.",
)
@click.option("--kds-url", metavar="URL", help="AMD KDS base URL (default https://kdsintf.amd.com).")
@click.option(
    "--pcs-url", metavar="URL", help="Intel PCS base URL (default https://api.trustedservices.intel.com)."
)
@click.option(
    "--root-crl-url",
    metavar="URL",
    help="Intel SGX Root CA CRL URL (default Intel's; with --pcs-url: PCS-URL/IntelSGXRootCA.der).",
)
@click.option(
    "--from-host",
    metavar="URL",
    help="Copy the collateral a keep manager pre-provisioned (untrusted; token: --token-file or "
    "$STOCKADE_TOKEN).",
)
@click.option(
    "--token-file", type=click.Path(dir_okay=False, path_type=Path), help="With --from-host: API token file."
)
@click.option(
    "--cacert",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="With --from-host: CA certificate(s) of the manager's TLS certificate.",
)
@click.option("--insecure-http", is_flag=True, help="With --from-host: allow the token over plain http.")
@click.option(
    "--retries", type=click.IntRange(0, 10), default=2, show_default=True, help="Retries of a failed GET."
)
@click.option(
    "--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True, help="Seconds per GET."
)
@_at_option
@json_option("Print what was stored as JSON.")
def fetch(
    evidence: Path | None,
    cache: Path | None,
    state_dir: Path | None,
    snp_product: str | None,
    chip_id: str | None,
    tcb: str | None,
    vlek: bool,
    no_crl: bool,
    fmspc: str | None,
    tee: str | None,
    pck_ca: str,
    kds_url: str | None,
    pcs_url: str | None,
    root_crl_url: str | None,
    from_host: str | None,
    token_file: Path | None,
    cacert: Path | None,
    insecure_http: bool,
    retries: int,
    timeout: float,
    at_text: str | None,
    as_json: bool,
) -> None:
    """Fill the collateral store for EVIDENCE (an SEV-SNP report, a TDX or
    SGX quote) or for explicit selectors, or from a keep manager."""
    from rich.console import Console

    from stockade.commands._files import parse_time, read_input
    from stockade.evidence.store import describe

    at = parse_time(at_text)
    store = _store(cache, state_dir)
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def progress(line: str) -> None:
        if not as_json:
            err.print(f"[dim]…[/dim] {safe_text(line)}", markup=True)

    snp_selectors = chip_id is not None or tcb is not None or vlek
    intel_selectors = fmspc is not None or tee is not None
    chosen = [bool(evidence), snp_selectors, intel_selectors, from_host is not None]
    if sum(chosen) != 1:
        raise UsageError(
            "give one of: EVIDENCE, SEV-SNP selectors (--snp-product with --chip-id and --tcb, or --vlek), "
            "TDX/SGX selectors (--fmspc with --tdx or --sgx), or --from-host URL"
        )
    if from_host is None and (token_file or cacert or insecure_http):
        raise UsageError("--token-file, --cacert and --insecure-http go with --from-host")
    if no_crl and (intel_selectors or from_host):
        raise UsageError("--no-crl applies to SEV-SNP collateral only")

    names: list[str]
    actions: dict[str, str] = {}
    if from_host is not None:
        from stockade.client.provision import pull_from_host
        from stockade.client.remote import ManagerClient
        from stockade.commands.remote import _token

        with ManagerClient(
            from_host, _token(token_file), cacert=cacert, allow_insecure_http=insecure_http
        ) as client:
            pulled = pull_from_host(client, store, progress)
        names = [p.entry.name for p in pulled]
        actions = {p.entry.name: p.action for p in pulled}
    elif snp_selectors or (evidence is not None and _is_snp(read_input(evidence, "EVIDENCE"))):
        names = _fetch_snp(
            store, evidence, snp_product, chip_id, tcb, vlek, no_crl, kds_url, retries, timeout, progress
        )
    else:
        if no_crl:
            raise UsageError("--no-crl applies to SEV-SNP collateral only")
        names = _fetch_intel(
            store, evidence, fmspc, tee, pck_ca, pcs_url, root_crl_url, retries, timeout, at, progress
        )

    entries = [describe(n, store.read(n)) for n in names]
    if as_json:
        doc = {
            "cache": str(store.root),
            "at": at.isoformat(),
            "files": [
                {**e.to_json(at), **({"action": actions[e.name]} if e.name in actions else {})}
                for e in entries
            ],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    _print_entries(entries, at, f"collateral in {safe_text(store.root)}")
    click.echo("collateral is verified when it is used, never trusted for having been fetched")


def _is_snp(data: bytes) -> bool:
    from stockade.errors import MalformedEvidence
    from stockade.evidence.registry import sniff
    from stockade.wire.platform import Platform

    platform = sniff(data)
    if platform is None:
        raise MalformedEvidence("EVIDENCE is neither an SEV-SNP report nor a TDX or SGX quote")
    return platform is Platform.SNP


def _fetch_snp(
    store: CollateralStore,
    evidence: Path | None,
    snp_product: str | None,
    chip_id: str | None,
    tcb_text: str | None,
    vlek: bool,
    no_crl: bool,
    kds_url: str | None,
    retries: int,
    timeout: float,
    progress: Any,
) -> list[str]:
    from stockade.commands._files import read_input
    from stockade.evidence.snp.abi import SigningKey
    from stockade.evidence.snp.collateral import DEFAULT_KDS, KdsFetcher
    from stockade.evidence.snp.verify import HWID_LENGTH

    product = _product(snp_product) if snp_product else None
    with KdsFetcher(kds_url or DEFAULT_KDS, retries=retries, timeout=timeout) as kds:
        if evidence is not None:
            if chip_id or tcb_text or vlek:
                raise UsageError("--chip-id, --tcb and --vlek are selectors: give them instead of EVIDENCE")
            return store.fetch_snp_for_report(
                kds, read_input(evidence, "EVIDENCE"), product, with_crl=not no_crl, progress=progress
            )
        if product is None:
            raise UsageError("SEV-SNP selectors need --snp-product milan|genoa|turin")
        if vlek:
            if chip_id or tcb_text:
                raise UsageError(
                    "--vlek fetches the VLEK chain and CRL: KDS serves no VLEKs (drop --chip-id/--tcb)"
                )
            return store.fetch_snp(kds, product, SigningKey.VLEK, with_crl=not no_crl, progress=progress)
        if chip_id is None or tcb_text is None:
            raise UsageError("a VCEK is selected by --chip-id HEX and --tcb TCB (or use --vlek)")
        try:
            hwid = bytes.fromhex(chip_id.removeprefix("0x"))
        except ValueError:
            raise UsageError("--chip-id: not hex") from None
        size = HWID_LENGTH[product]
        if len(hwid) == 64 and size < 64:
            if any(hwid[size:]):
                raise UsageError(f"--chip-id: a {product.value} CHIP_ID has zeros after its {size}-byte hwID")
            hwid = hwid[:size]
        if len(hwid) != size:
            raise UsageError(f"--chip-id: a {product.value} hwID is {size} bytes, got {len(hwid)}")
        tcb = _parse_tcb(tcb_text, product)
        return store.fetch_snp(
            kds, product, SigningKey.VCEK, hwid=hwid, tcb=tcb, with_crl=not no_crl, progress=progress
        )


def _fetch_intel(
    store: CollateralStore,
    evidence: Path | None,
    fmspc: str | None,
    tee: str | None,
    pck_ca: str,
    pcs_url: str | None,
    root_crl_url: str | None,
    retries: int,
    timeout: float,
    at: datetime,
    progress: Any,
) -> list[str]:
    from stockade.commands._files import read_input
    from stockade.evidence.intel.collateral import CollateralKey

    if evidence is not None:
        if fmspc or tee:
            raise UsageError("--fmspc, --tdx and --sgx are selectors: give them instead of EVIDENCE")
        key = CollateralKey.for_quote(read_input(evidence, "EVIDENCE"))
    else:
        if fmspc is None or tee is None:
            raise UsageError("TDX/SGX selectors are --fmspc HEX with --tdx or --sgx")
        compact = fmspc.removeprefix("0x")
        if len(compact) != 12 or any(c not in "0123456789abcdefABCDEF" for c in compact):
            raise UsageError(f"--fmspc {fmspc!r}: expected 6 bytes (12 hex digits)")
        key = CollateralKey(tee=tee, fmspc=compact.upper(), ca=pck_ca)
    if pcs_url is not None and root_crl_url is None:
        import urllib.parse

        from stockade.evidence.intel.collateral import ROOT_CRL_URL

        # A PCS mirror (a PCCS, the fake PCS) serves the root CA CRL at Intel's path.
        root_crl_url = pcs_url.rstrip("/") + urllib.parse.urlsplit(ROOT_CRL_URL).path
    return store.fetch_intel(
        key,
        at,
        pcs_url=pcs_url,
        root_crl_url=root_crl_url,
        retries=retries,
        timeout=timeout,
        progress=progress,
    )


@collateral.command(name="ls")
@_cache_options
@_at_option
@json_option("Print the entries as JSON.")
def ls(cache: Path | None, state_dir: Path | None, at_text: str | None, as_json: bool) -> None:
    """List the collateral store: kind, key, issued, next update, expired."""
    from stockade.commands._files import parse_time

    at = parse_time(at_text)
    store = _store(cache, state_dir)
    entries = list(store.entries())
    if as_json:
        click.echo(
            json.dumps(
                {"cache": str(store.root), "at": at.isoformat(), "files": [e.to_json(at) for e in entries]},
                indent=2,
            )
        )
        return
    if not entries:
        click.echo(f"no collateral in {safe_text(store.root)}")
        return
    _print_entries(entries, at, f"collateral in {safe_text(store.root)}")


@collateral.command()
@_cache_options
@_at_option
@click.option("--all", "everything", is_flag=True, help="Remove every entry, not only expired ones.")
@json_option("Print what was removed as JSON.")
def prune(
    cache: Path | None, state_dir: Path | None, at_text: str | None, everything: bool, as_json: bool
) -> None:
    """Remove expired (and unreadable) collateral, or all of it with --all."""
    from stockade.commands._files import parse_time

    at = parse_time(at_text)
    store = _store(cache, state_dir)
    removed = store.prune(at, everything)
    if as_json:
        click.echo(
            json.dumps(
                {"cache": str(store.root), "at": at.isoformat(), "removed": [e.to_json(at) for e in removed]},
                indent=2,
            )
        )
        return
    for e in removed:
        click.echo(f"removed {safe_text(e.name)} ({safe_text(e.kind)})")
    click.echo(f"{len(removed)} removed from {safe_text(store.root)}")
