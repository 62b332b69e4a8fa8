"""The sim chip: a locally generated ARK -> ASK -> VCEK chain, built like AMD's.

Generated at first use in ``<state dir>/sim`` and kept there: ARK and ASK are
RSA-4096 keys signing with RSASSA-PSS SHA-384 (salt 48), the VCEK is an
ECDSA P-384 key whose certificate carries AMD's VCEK extensions (product
name, bootloader/TEE/SNP/microcode SPLs, 64-byte hwID = CHIP_ID). The SNP
verifier treats this chain exactly like AMD's, only with this ARK as the root
for platform "sim".

THE SIM CHIP GIVES NO HARDWARE PROTECTION: its private keys are ordinary
files readable by the host's root user, and nothing isolates the Keep's
memory. It exists so that every code path of attestation runs in CI.

Difference from AMD (deliberate, forced): AMD's certificates have serial
number 0; pyca/cryptography refuses to *build* such certificates, so the
sim chain uses random positive serials. Serial-0 loading is exercised by the
real vectors instead.

The certificate builders here (ca_certificate, endorsement_extensions,
endorsement_certificate) are shared with stockade.testing.amd, the fake AMD
PKI for any product.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from stockade.evidence.pki import der_of, load_der
from stockade.evidence.snp import certs as amd
from stockade.evidence.snp.abi import Product, TcbVersion
from stockade.wire import der

PRODUCT = Product.MILAN
PRODUCT_NAME = "Milan-B0"
CPUID = (0x19, 0x01, 0x01)  # family, model, stepping of a Milan B0 part
#: The sim chip's TCB, reported in every report and in the VCEK extensions.
TCB = {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
FIRMWARE = (1, 55, 29)
ORG = "stockade sim chip - NO HARDWARE PROTECTION"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass(frozen=True)
class SimChip:
    """What the sim PSP needs: the VCEK key and the certificates to hand out."""

    vcek_key: ec.EllipticCurvePrivateKey
    vcek_der: bytes
    ask_der: bytes
    ark_der: bytes
    chip_id: bytes

    @property
    def reported_tcb(self) -> TcbVersion:
        return TcbVersion.from_components(PRODUCT, **TCB)


def sim_dir(state_dir: Path) -> Path:
    return state_dir / "sim"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        ]
    )


# --- certificate builders shared with stockade.testing.amd -------------------------


def ca_certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey,
    signing_key: rsa.RSAPrivateKey,
    not_before: datetime,
    not_after: datetime,
    *,
    serial: int | None = None,
) -> x509.Certificate:
    """An ARK/ASK/ASVK-like CA certificate: critical BasicConstraints(ca),
    signed with RSASSA-PSS SHA-384 (MGF1 SHA-384, salt 48) as AMD's are."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA384(), rsa_padding=_PSS)
    )


def endorsement_extensions(
    product_name: str,
    tcb: dict[str, int],
    *,
    hwid: bytes | None = None,
    csp_id: str | None = None,
    struct_version: int = 1,
    reserved_spls: Sequence[int] = (),
) -> list[tuple[x509.ObjectIdentifier, bytes]]:
    """AMD's VCEK/VLEK extensions (pub. 57230) as (OID, DER value) pairs, in
    the order KDS certificates have them: structVersion, productName, the
    SPLs, then hwID (raw bytes, VCEK) and csp_id (IA5String, VLEK). SPLs:
    blSPL, teeSPL, spl_N (zero, for N in ``reserved_spls``), snpSPL,
    ucodeSPL; with "fmc" in ``tcb`` (Turin) fmcSPL, blSPL, teeSPL, snpSPL,
    spl_N, ucodeSPL."""
    exts: list[tuple[x509.ObjectIdentifier, bytes]] = [
        (amd.OID_STRUCT_VERSION, der.uint(struct_version)),
        (amd.OID_PRODUCT_NAME, der.ia5(product_name)),
    ]
    reserved = [(x509.ObjectIdentifier(f"{amd.AMD}.3.{n}"), der.uint(0)) for n in reserved_spls]
    bl_tee = [(amd.OID_BL_SPL, der.uint(tcb["bootloader"])), (amd.OID_TEE_SPL, der.uint(tcb["tee"]))]
    snp = (amd.OID_SNP_SPL, der.uint(tcb["snp"]))
    if "fmc" in tcb:
        exts += [(amd.OID_FMC_SPL, der.uint(tcb["fmc"])), *bl_tee, snp, *reserved]
    else:
        exts += [*bl_tee, *reserved, snp]
    exts.append((amd.OID_UCODE_SPL, der.uint(tcb["microcode"])))
    if hwid is not None:
        exts.append((amd.OID_HWID, hwid))
    if csp_id is not None:
        exts.append((amd.OID_CSP_ID, der.ia5(csp_id)))
    return exts


def endorsement_certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: rsa.RSAPrivateKey,
    not_before: datetime,
    not_after: datetime,
    extensions: list[tuple[x509.ObjectIdentifier, bytes]],
    *,
    serial: int | None = None,
) -> x509.Certificate:
    """A VCEK/VLEK-like certificate for an ECDSA P-384 key carrying
    ``extensions`` (non-critical, undecoded), signed with RSASSA-PSS SHA-384."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(signing_key, hashes.SHA384(), rsa_padding=_PSS)


def _generate(target: Path, now: datetime) -> None:
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    chip_id = secrets.token_bytes(64)
    ark_name, ask_name = _name("ARK-Sim-Milan"), _name("SEV-Sim-Milan")
    not_before = now - timedelta(days=1)
    ca_until = now + timedelta(days=365 * 25)
    ark = ca_certificate(ark_name, ark_name, ark_key.public_key(), ark_key, not_before, ca_until)
    ask = ca_certificate(ask_name, ark_name, ask_key.public_key(), ark_key, not_before, ca_until)
    vcek = endorsement_certificate(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
            ]
        ),
        ask_name,
        vcek_key.public_key(),
        ask_key,
        not_before,
        now + timedelta(days=365 * 7),
        endorsement_extensions(PRODUCT_NAME, TCB, hwid=chip_id),
    )

    def pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    files = {
        "ark.der": der_of(ark),
        "ask.der": der_of(ask),
        "vcek.der": der_of(vcek),
        "ark.key": pem_key(ark_key),
        "ask.key": pem_key(ask_key),
        "vcek.key": pem_key(vcek_key),
        "chip.json": json.dumps(
            {
                "chip_id": chip_id.hex(),
                "product": PRODUCT_NAME,
                "tcb": TCB,
                "created": now.isoformat(),
                "note": ORG,
            },
            indent=2,
        ).encode(),
    }
    for name, data in files.items():
        path = target / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if name.endswith(".key") else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def create_once(
    state_dir: Path, chip: Path, generate: Callable[[Path, datetime], None], now: datetime | None
) -> bool:
    """Generate a sim chip into ``chip`` (below the sim directory of
    ``state_dir``) unless its ``chip.json`` exists: built in a temporary
    directory and renamed into place under the sim directory's lock, so
    concurrent callers see one complete chip. True when it was generated."""
    if (chip / "chip.json").exists():
        return False
    with _locked(sim_dir(state_dir)):
        if (chip / "chip.json").exists():
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{chip.name}-", dir=sim_dir(state_dir)))
        generate(tmp, now or datetime.now(UTC))
        tmp.rename(chip)
        return True


def ensure_chip(state_dir: Path, now: datetime | None = None) -> bool:
    """Create the sim chip in ``state_dir`` unless it exists. Returns True when
    it had to be generated (takes a few seconds: two RSA-4096 keys)."""
    return create_once(state_dir, sim_dir(state_dir) / "chip", _generate, now)


def sim_root(state_dir: Path) -> bytes:
    """DER of the sim ARK kept in ``state_dir`` (the root a client may trust)."""
    return (sim_dir(state_dir) / "chip" / "ark.der").read_bytes()


#: How long a CRL issued by :func:`sim_crl` is valid (its nextUpdate);
#: a new one is issued once less than CRL_RENEW is left.
CRL_VALIDITY = timedelta(days=7)
CRL_RENEW = timedelta(days=1)


def issue_crl(
    state_dir: Path,
    now: datetime,
    revoked: Sequence[int] = (),
    validity: timedelta = CRL_VALIDITY,
) -> bytes:
    """A DER CRL issued and signed by the sim ARK, built like the CRL AMD's
    KDS serves at ``/vcek/v1/{product}/crl`` (issuer the ARK, RSASSA-PSS
    SHA-384 salt 48, a CRL number, thisUpdate and nextUpdate; AMD pub. 57230
    chapter 4), revoking the certificates the ARK issued with serial numbers
    in ``revoked`` (the ASK's, for tests)."""
    chip = sim_dir(state_dir) / "chip"
    key = serialization.load_pem_private_key((chip / "ark.key").read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("sim ARK key is not an RSA key")
    ark = load_der((chip / "ark.der").read_bytes(), "sim ARK")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ark.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
    )
    for number in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(number).revocation_date(now).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(key, hashes.SHA384(), rsa_padding=_PSS).public_bytes(serialization.Encoding.DER)


def sim_crl(state_dir: Path, now: datetime | None = None) -> bytes:
    """The sim chip's current CRL (``<state dir>/sim/chip/crl.der``): the
    one stored there while it has more than CRL_RENEW left, else a new one
    revoking nothing, stored for the next run. Needs the ARK's key, so only
    the machine that holds the sim chip can issue it."""
    now = now or datetime.now(UTC)
    path = sim_dir(state_dir) / "chip" / "crl.der"

    def current() -> bytes | None:
        try:
            der = path.read_bytes()
            crl = x509.load_der_x509_crl(der)
        except (OSError, ValueError):
            return None
        next_update = crl.next_update_utc
        if next_update is None or next_update - now < CRL_RENEW or crl.last_update_utc > now:
            return None
        return der

    der = current()
    if der is not None:
        return der
    with _locked(sim_dir(state_dir)):
        der = current()
        if der is None:
            der = issue_crl(state_dir, now)
            tmp = path.with_name(f".crl-{secrets.token_hex(8)}")
            tmp.write_bytes(der)
            tmp.replace(path)
    return der


def load_chip(state_dir: Path) -> SimChip:
    chip = sim_dir(state_dir) / "chip"
    key = serialization.load_pem_private_key((chip / "vcek.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("sim VCEK key is not an EC key")
    info = json.loads((chip / "chip.json").read_text())
    return SimChip(
        vcek_key=key,
        vcek_der=(chip / "vcek.der").read_bytes(),
        ask_der=(chip / "ask.der").read_bytes(),
        ark_der=(chip / "ark.der").read_bytes(),
        chip_id=bytes.fromhex(info["chip_id"]),
    )


def check_chip(state_dir: Path) -> None:
    """Fail early if the stored chain does not parse (e.g. a corrupted file)."""
    chip = load_chip(state_dir)
    for name, blob in (("VCEK", chip.vcek_der), ("ASK", chip.ask_der), ("ARK", chip.ark_der)):
        load_der(blob, f"sim {name}")
