"""stockade.measure.tdx: PE/COFF Authenticode, RTMR replay, the expected
RTMR[1]/[2] of a TDVF direct kernel boot, and ``stockade image measure tdx``.
Vectors and their provenance: tests/data/tdx-measure/README.md."""

from __future__ import annotations

import glob
import hashlib
import json
import re
import shutil
import struct
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from stockade.commands._measure_tdx import tdx as tdx_command
from stockade.errors import ImageError, MalformedEvidence, UsageError
from stockade.measure import tdx

DATA = Path(__file__).resolve().parent / "data"
VECTORS = DATA / "tdx-measure"
EXPECTED = json.loads((VECTORS / "expected.json").read_text())
SHIM = (VECTORS / "fbx64.efi.signed").read_bytes()
CCEL = (VECTORS / "ccel_data.bin").read_bytes()
GCP_QUOTE = json.loads((DATA / "vectors/tdx/v4-gcp-cos-go-tdx-guest/expected.json").read_text())["body"]
DEBIAN_KERNELS = sorted(glob.glob("/boot/vmlinuz-*"))


def make_kernel(
    release: str = "6.12.0-test", payload: bytes = b"\x90" * 0x800, *, protocol: int = 0x20F
) -> bytes:
    """A small bzImage-shaped PE32+ image: DOS header, PE header and one
    section table in the first sector, the Linux setup header at 0x1f1
    ('HdrS', protocol, loadflags, xloadflags, kernel_version string) inside
    SizeOfHeaders (0x1000), one section of ``payload`` after it."""
    size_of_headers = 0x1000
    image = bytearray(size_of_headers + len(payload))
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, 0x80)
    image[0x80:0x84] = b"PE\x00\x00"
    struct.pack_into("<HHIIIHH", image, 0x84, 0x8664, 1, 0, 0, 0, 0xF0, 0x0206)
    optional = 0x98
    struct.pack_into("<H", image, optional, 0x20B)
    struct.pack_into("<I", image, optional + 60, size_of_headers)  # SizeOfHeaders
    struct.pack_into("<I", image, optional + 64, 0x12345678)  # CheckSum (not hashed)
    struct.pack_into("<I", image, optional + 108, 16)  # NumberOfRvaAndSizes
    section = optional + 0xF0
    image[section : section + 8] = b".text\x00\x00\x00"
    struct.pack_into("<IIII", image, section + 8, len(payload), 0x1000, len(payload), size_of_headers)
    image[0x1F1] = 1  # setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, protocol)
    struct.pack_into("<H", image, 0x20E, 0x300 - 0x200)  # kernel_version
    image[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<H", image, 0x236, 0x7F)  # xloadflags: CAN_BE_LOADED_ABOVE_4G and more
    version = f"{release} (test@example) #1 SMP".encode() + b"\x00"
    image[0x300 : 0x300 + len(version)] = version
    image[size_of_headers:] = payload
    return bytes(image)


# ---------------------------------------------------------------- Authenticode


def test_authenticode_sha256_equals_debians_signature() -> None:
    assert (
        tdx.authenticode_digest(SHIM, "sha256").hex() == EXPECTED["fbx64.efi.signed"]["authenticode_sha256"]
    )
    assert hashlib.sha256(SHIM).hexdigest() == EXPECTED["fbx64.efi.signed"]["sha256_of_file"]


def test_authenticode_sha384_equals_osslsigncode() -> None:
    assert tdx.authenticode_digest(SHIM).hex() == EXPECTED["fbx64.efi.signed"]["authenticode_sha384"]


def _signed_digest_sha256(image: bytes) -> bytes:
    """The SHA-256 digest inside an Authenticode signature: the
    SpcIndirectDataContent DigestInfo (AlgorithmIdentifier sha256, NULL,
    OCTET STRING of 32 bytes) in the PKCS#7 at the certificate table."""
    optional = struct.unpack_from("<I", image, 0x3C)[0] + 24
    address, size = struct.unpack_from("<II", image, optional + 112 + 8 * 4)
    blob = image[address : address + size]
    marker = bytes.fromhex("300d06096086480165030402010500" + "0420")
    at = blob.index(marker)
    return blob[at + len(marker) : at + len(marker) + 32]


@pytest.mark.skipif(not DEBIAN_KERNELS, reason="no Debian kernel in /boot")
def test_authenticode_of_the_debian_kernel_equals_its_signature() -> None:
    kernel = Path(DEBIAN_KERNELS[-1]).read_bytes()
    assert tdx.authenticode_digest(kernel, "sha256") == _signed_digest_sha256(kernel)
    assert _signed_digest_sha256(SHIM).hex() == EXPECTED["fbx64.efi.signed"]["authenticode_sha256"]


@pytest.mark.skipif(shutil.which("osslsigncode") is None, reason="osslsigncode not installed")
def test_authenticode_sha384_recomputed_by_osslsigncode(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "throwaway")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    kernel = make_kernel(payload=bytes(range(256)) * 9)
    (tmp_path / "in.efi").write_bytes(kernel)

    def osslsigncode(*args: str) -> str:
        return subprocess.run(
            ["osslsigncode", *args], check=True, capture_output=True, text=True, timeout=60, cwd=tmp_path
        ).stdout

    osslsigncode("sign", "-h", "sha384", "-certs", "c.pem", "-key", "k.pem", "-in", "in.efi", "-out", "s.efi")
    out = osslsigncode("verify", "-in", "s.efi", "-CAfile", "c.pem")
    calculated = re.search(r"Calculated message digest\s*:\s*([0-9A-Fa-f]+)", out)
    assert calculated is not None, out
    assert tdx.authenticode_digest(kernel).hex() == calculated.group(1).lower()


def test_authenticode_excludes_checksum_and_certificate_table_but_covers_the_rest() -> None:
    kernel = bytearray(make_kernel())
    base = tdx.authenticode_digest(bytes(kernel))
    struct.pack_into("<I", kernel, 0x98 + 64, 0xDEADBEEF)  # CheckSum
    assert tdx.authenticode_digest(bytes(kernel)) == base
    for offset in (0x10, 0x1F1 + 0x20, 0x1000, len(kernel) - 1):  # DOS stub, setup header, section data
        changed = bytearray(kernel)
        changed[offset] ^= 1
        assert tdx.authenticode_digest(bytes(changed)) != base, hex(offset)
    # Trailing data after the sections is hashed, unless it is the certificate table.
    assert tdx.authenticode_digest(bytes(kernel) + b"tail") != base
    signed = bytearray(kernel) + b"CERT" * 4
    struct.pack_into("<II", signed, 0x98 + 112 + 32, len(kernel), 16)
    assert tdx.authenticode_digest(bytes(signed)) == base


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda k: b"XY" + k[2:], "no 'MZ' DOS header"),
        (lambda k: k[:0x3C] + struct.pack("<I", 0xFFFFFF) + k[0x40:], "PE header offset"),
        (lambda k: k[:0x80] + b"NE\x00\x00" + k[0x84:], "no 'PE' signature"),
        (lambda k: k[:0x98] + struct.pack("<H", 0x107) + k[0x9A:], "magic 0x107"),
        (
            lambda k: k[: 0x98 + 108] + struct.pack("<I", 1000) + k[0x98 + 112 :],
            "data directories do not fit",
        ),
        (lambda k: k[: 0x98 + 60] + struct.pack("<I", 0x10) + k[0x98 + 64 :], "SizeOfHeaders"),
        (lambda k: k[:-0x100], "extends beyond the file"),
        (
            lambda k: k[: 0x98 + 144] + struct.pack("<II", 0x1800, 0x9000) + k[0x98 + 152 :] + b"x" * 16,
            "certificate table",
        ),
        (lambda k: k[:0x30], "no 'MZ' DOS header"),
    ],
)
def test_malformed_pe_is_an_image_error(mutate: object, message: str) -> None:
    kernel = mutate(make_kernel())  # type: ignore[operator]
    with pytest.raises(ImageError, match=re.escape(message)) as raised:
        tdx.authenticode_digest(kernel)
    assert raised.value.exit_code == 121


def test_unsupported_hash_is_refused() -> None:
    with pytest.raises(ImageError, match="unsupported hash"):
        tdx.authenticode_digest(SHIM, "md5")


# ---------------------------------------------------------------- event log replay


def test_replay_of_a_published_cc_event_log_gives_the_quotes_rtmrs() -> None:
    rtmrs = tdx.replay_cc_event_log(CCEL)
    assert hashlib.sha256(CCEL).hexdigest() == EXPECTED["ccel_data.bin"]["sha256_of_file"]
    assert {i: v.hex() for i, v in rtmrs.items()} == {i: GCP_QUOTE[f"rtmr{i}"] for i in range(4)}


def test_tdvf_boot_service_events_match_the_published_log() -> None:
    """The RTMR[1] action and separator events we expect TDVF to extend are
    the ones a real TDVF logged (same data, same digests, MR index 2)."""
    logged = {(e.event_type, e.data): e for e in tdx.parse_cc_event_log(CCEL) if e.mr_index == 2}
    expected = [
        e
        for e in tdx.tdx_events(make_kernel(), b"initrd", "console=hvc0")
        if e.rtmr == 1 and e.event_type != tdx.EV_EFI_BOOT_SERVICES_APPLICATION
    ]
    datas = [tdx.CALLING_EFI_APPLICATION, tdx.SEPARATOR_DATA, tdx.EXIT_BOOT_SERVICES_INVOCATION]
    datas.append(tdx.EXIT_BOOT_SERVICES_SUCCEEDED)
    assert len(expected) == 4
    for event, data in zip(expected, datas, strict=True):
        assert logged[(event.event_type, data)].digest == event.digest


def test_extend_is_sha384_of_register_and_digest() -> None:
    d = tdx.sha384(b"x")
    assert tdx.extend(tdx.ZERO, d) == hashlib.sha384(bytes(48) + d).digest()
    assert tdx.replay([d, d]) == tdx.extend(tdx.extend(tdx.ZERO, d), d)
    with pytest.raises(ImageError, match="48-byte"):
        tdx.extend(tdx.ZERO, b"short")


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (CCEL[:20], "first event"),
        (CCEL[:40], "Spec ID event"),
        (
            b"\x00" * 4
            + b"\x03\x00\x00\x00"
            + bytes(20)
            + struct.pack("<I", 32)
            + b"Spec ID Event02\x00"
            + bytes(16),
            "Spec ID",
        ),
        (CCEL[:0x60], "runs past the end"),
    ],
)
def test_malformed_event_log_is_malformed_evidence(log: bytes, message: str) -> None:
    with pytest.raises(MalformedEvidence, match=message):
        tdx.parse_cc_event_log(log)


# ---------------------------------------------------------------- expected RTMRs


KERNEL = make_kernel()
INITRD = b"070701" + bytes(range(256)) * 40
APPEND = "console=hvc0 quiet"


def test_rtmrs_are_the_replay_of_the_documented_events() -> None:
    rtmrs = tdx.tdx_rtmrs(KERNEL, INITRD, APPEND)
    options = ("initrd=initrd " + APPEND).encode("utf-16-le") + b"\x00\x00"
    rtmr1 = [
        tdx.authenticode_digest(KERNEL),
        hashlib.sha384(b"Calling EFI Application from Boot Option").digest(),
        hashlib.sha384(bytes(4)).digest(),
        hashlib.sha384(b"Exit Boot Services Invocation").digest(),
        hashlib.sha384(b"Exit Boot Services Returned with Success").digest(),
    ]
    rtmr2 = [hashlib.sha384(options).digest(), hashlib.sha384(INITRD).digest()]
    assert rtmrs == {1: tdx.replay(rtmr1), 2: tdx.replay(rtmr2)}
    assert rtmrs[1] != tdx.ZERO and rtmrs[2] != tdx.ZERO


@pytest.mark.parametrize("where", ["kernel", "initrd", "append"])
def test_one_changed_byte_changes_the_rtmrs(where: str) -> None:
    base = tdx.tdx_rtmrs(KERNEL, INITRD, APPEND)
    kernel, initrd, append = bytearray(KERNEL), bytearray(INITRD), APPEND
    if where == "kernel":
        kernel[0x17FF] ^= 1
    elif where == "initrd":
        initrd[100] ^= 1
    else:
        append = append.replace("quiet", "quieu")
    changed = tdx.tdx_rtmrs(bytes(kernel), bytes(initrd), append)
    assert changed[1] != base[1] if where == "kernel" else changed[1] == base[1]
    assert changed[2] != base[2] if where != "kernel" else changed[2] == base[2]


def test_load_options_follow_the_tdvf_build() -> None:
    assert tdx.load_options("a b", True) == "initrd=initrd a b".encode("utf-16-le") + b"\x00\x00"
    old = tdx.EDK2_TDVF_BEFORE_202508
    assert tdx.load_options("a b", True, old) == "a b initrd=initrd".encode("utf-16-le") + b"\x00\x00"
    assert tdx.load_options("", True, old) == " initrd=initrd".encode("utf-16-le") + b"\x00\x00"
    assert tdx.load_options("a", False) == b"a\x00\x00\x00"
    assert tdx.load_options("", False) == b""  # LoadOptionsSize 0: the stub measures nothing
    # BasePrintLib widens each byte of QEMU's (UTF-8) command line, it does not decode it.
    assert tdx.load_options("é", False) == b"\xc3\x00\xa9\x00\x00\x00"
    with pytest.raises(ImageError, match="NUL"):
        tdx.load_options("a\x00b", False)
    a = tdx.tdx_rtmrs(KERNEL, INITRD, APPEND)
    b = tdx.tdx_rtmrs(KERNEL, INITRD, APPEND, firmware_events=old)
    assert a[1] == b[1] and a[2] != b[2]


def test_no_initrd_and_noinitrd() -> None:
    events = tdx.tdx_events(KERNEL, None, "")
    assert [e.rtmr for e in events] == [1] * 5  # no LoadOptions, no initrd: RTMR[2] stays zero
    assert tdx.tdx_rtmrs(KERNEL, None, "")[2] == tdx.ZERO
    noinitrd = [e.description for e in tdx.tdx_events(KERNEL, INITRD, "noinitrd") if e.rtmr == 2]
    assert noinitrd == ["LOADED_IMAGE::LoadOptions (kernel command line)"]


def test_old_kernel_without_cc_measurement_is_refused() -> None:
    old = make_kernel("6.1.0-57-cloud-amd64")
    with pytest.raises(ImageError, match=r"6\.1\.0-57-cloud-amd64: .* only from Linux 6\.9") as raised:
        tdx.tdx_rtmrs(old, INITRD, APPEND)
    assert raised.value.exit_code == 121
    rtmrs = tdx.tdx_rtmrs(old, INITRD, APPEND, kernel_measures=False)
    assert rtmrs[2] == tdx.ZERO
    with pytest.raises(ImageError, match="cannot read its release"):
        tdx.tdx_rtmrs(make_kernel("unknown"), INITRD, APPEND)
    assert tdx.stub_measures(make_kernel("6.9.0")) is True
    assert tdx.stub_measures(make_kernel("6.8.12")) is False


def test_not_a_bzimage_is_refused() -> None:
    kernel = bytearray(KERNEL)
    kernel[0x202:0x206] = b"XXXX"
    with pytest.raises(ImageError, match="not a Linux bzImage"):
        tdx.tdx_rtmrs(bytes(kernel), INITRD, APPEND)
    with pytest.raises(ImageError, match="not a PE/COFF image"):
        tdx.tdx_rtmrs(b"\x00" * 0x1F1 + KERNEL[0x1F1:], INITRD, APPEND)


def test_qemu_header_patch_writes_what_qemu_writes() -> None:
    patch = tdx.QemuHeaderPatch(memory=1 << 30)
    out = patch.apply(KERNEL, len(INITRD), APPEND.encode())
    assert out[0x210] == 0xB0  # type_of_loader
    assert out[0x211] == 0x81  # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack_from("<H", out, 0x224)[0] == 0x20000 - 0x10000 - 0x200  # heap_end_ptr
    assert struct.unpack_from("<I", out, 0x228)[0] == 0x20000  # cmd_line_ptr
    initrd_max = (1 << 30) - 0x28000 - 1
    assert struct.unpack_from("<II", out, 0x218) == ((initrd_max - len(INITRD)) & ~4095, len(INITRD))
    changed = {i for i in range(len(KERNEL)) if KERNEL[i] != out[i]}
    assert changed <= set(range(0x210, 0x22C))
    vga = patch.apply(KERNEL, 0, b"vga=0x317")
    assert struct.unpack_from("<H", vga, 0x1FA)[0] == 0x317
    assert struct.unpack_from("<H", patch.apply(KERNEL, 0, b"vga=ask"), 0x1FA)[0] == 0xFFFD
    assert struct.unpack_from("<H", patch.apply(KERNEL, 0, b"vga=017"), 0x1FA)[0] == 0o17
    with pytest.raises(ImageError, match="vga="):
        patch.apply(KERNEL, 0, b"vga=big")


def test_qemu_header_patch_depends_on_memory_like_dstack_mr_says() -> None:
    """dstack-mr's kernel.rs test: below 2 GiB and between 2 GiB and
    0xB0000000 the initrd address differs; exactly 2 GiB and >= 0xB0000000
    give the same patched kernel."""

    def rtmr1(memory: int) -> bytes:
        return tdx.tdx_rtmrs(KERNEL, INITRD, APPEND, qemu_header_patch=tdx.QemuHeaderPatch(memory))[1]

    unpatched = tdx.tdx_rtmrs(KERNEL, INITRD, APPEND)[1]
    assert rtmr1(0x80000000 - 0x1000) != rtmr1(0x80000000)
    assert rtmr1(0xB0000000 - 0x1000) != rtmr1(0xB0000000)
    assert rtmr1(0x80000000) == rtmr1(0xB0000000) == rtmr1(0xB0000000 + (1 << 30))
    assert unpatched not in {rtmr1(0x80000000), rtmr1(1 << 30)}
    with pytest.raises(ImageError, match="initrd"):
        tdx.tdx_rtmrs(KERNEL, bytes(64 << 20), APPEND, qemu_header_patch=tdx.QemuHeaderPatch(48 << 20))


@pytest.mark.skipif(not DEBIAN_KERNELS, reason="no Debian kernel in /boot")
def test_a_real_debian_kernel() -> None:
    kernel = Path(DEBIAN_KERNELS[-1]).read_bytes()
    header = tdx.setup_header(kernel)
    assert header.protocol >= 0x20C and header.release and header.release in Path(DEBIAN_KERNELS[-1]).name
    events = tdx.tdx_events(kernel, INITRD, APPEND, kernel_measures=True)
    assert events[0].digest == tdx.authenticode_digest(kernel)


# ---------------------------------------------------------------- CLI


def _run(args: list[str]) -> object:
    return CliRunner().invoke(tdx_command, args)


def test_cli_prints_the_rtmrs_and_what_is_not_computable(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(KERNEL)
    (tmp_path / "i").write_bytes(INITRD)
    result = CliRunner().invoke(
        tdx_command, ["--kernel", str(tmp_path / "k"), "--initrd", str(tmp_path / "i"), "--append", APPEND]
    )
    assert result.exit_code == 0, result.output
    rtmrs = tdx.tdx_rtmrs(KERNEL, INITRD, APPEND)
    assert f'rtmr1 = ["{rtmrs[1].hex()}"]' in result.output
    assert f'rtmr2 = ["{rtmrs[2].hex()}"]' in result.output
    # The text output is a valid fragment of a policy's [tdx] table.
    snippet = tomllib.loads(result.output)
    assert snippet == {"rtmr1": [rtmrs[1].hex()], "rtmr2": [rtmrs[2].hex()]}
    for name in ("mrtd", "rtmr0", "rtmr3"):
        assert f"#   {name}: " in result.output

    as_json = CliRunner().invoke(
        tdx_command,
        ["--kernel", str(tmp_path / "k"), "--initrd", str(tmp_path / "i"), "--append", APPEND, "--json"],
    )
    doc = json.loads(as_json.output)
    assert doc["rtmr1"] == rtmrs[1].hex() and doc["rtmr2"] == rtmrs[2].hex()
    assert set(doc["not_computable"]) == {"mrtd", "rtmr0", "rtmr3"}
    assert [e["event_type"] for e in doc["events"]][:3] == [
        "EV_EFI_BOOT_SERVICES_APPLICATION",
        "EV_EFI_ACTION",
        "EV_SEPARATOR",
    ]
    assert doc["kernel_release"] == "6.12.0-test"


def test_cli_image_dir_and_options(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    (tmp_path / "initrd.img").write_bytes(INITRD)
    (tmp_path / "cmdline").write_text(APPEND)
    doc = json.loads(CliRunner().invoke(tdx_command, ["--image", str(tmp_path), "--json"]).output)
    assert doc["rtmr2"] == tdx.tdx_rtmrs(KERNEL, INITRD, APPEND)[2].hex()
    old = json.loads(
        CliRunner().invoke(tdx_command, ["--image", str(tmp_path), "--json", "--edk2-before-202508"]).output
    )
    assert (
        old["rtmr2"]
        == tdx.tdx_rtmrs(KERNEL, INITRD, APPEND, firmware_events=tdx.EDK2_TDVF_BEFORE_202508)[2].hex()
    )
    patched = json.loads(
        CliRunner()
        .invoke(tdx_command, ["--image", str(tmp_path), "--json", "--qemu-patched-header", "2048"])
        .output
    )
    assert (
        patched["rtmr1"]
        == tdx.tdx_rtmrs(KERNEL, INITRD, APPEND, qemu_header_patch=tdx.QemuHeaderPatch(2 << 30))[1].hex()
    )


def test_cli_errors(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"not a kernel" * 400)
    bad = CliRunner().invoke(tdx_command, ["--kernel", str(tmp_path / "k")])
    assert isinstance(bad.exception, ImageError) and bad.exception.exit_code == 121
    assert "not a Linux bzImage" in str(bad.exception)
    missing = CliRunner().invoke(tdx_command, ["--kernel", str(tmp_path / "absent")])
    assert isinstance(missing.exception, ImageError) and "cannot read" in str(missing.exception)
    nothing = CliRunner().invoke(tdx_command, [])
    assert isinstance(nothing.exception, UsageError)
    both = CliRunner().invoke(tdx_command, ["--image", str(tmp_path), "--kernel", str(tmp_path / "k")])
    assert isinstance(both.exception, UsageError)
    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    (tmp_path / "initrd.img").write_bytes(INITRD)
    (tmp_path / "cmdline").write_bytes(b"\xff\xfe")
    not_utf8 = CliRunner().invoke(tdx_command, ["--image", str(tmp_path)])
    assert isinstance(not_utf8.exception, ImageError) and "not UTF-8" in str(not_utf8.exception)


def test_the_printed_registers_pin_a_policy(tmp_path: Path) -> None:
    """The command's text output, pasted into a [tdx] table, accepts claims
    whose RTMR[1]/[2] are the computed ones and refuses an image with one
    changed initrd byte (the policy's rtmr keys: docs/policy.md)."""
    from stockade.policy.core import evaluate
    from stockade.policy.load import loads_policy
    from stockade.testing.claims import make_claims

    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    (tmp_path / "initrd.img").write_bytes(INITRD)
    (tmp_path / "cmdline").write_text(APPEND)
    printed = CliRunner().invoke(tdx_command, ["--image", str(tmp_path)]).output
    policy = loads_policy('version = 1\nplatforms = ["tdx"]\n[tdx]\n' + printed, "snippet")
    good = tdx.tdx_rtmrs(KERNEL, INITRD, APPEND)
    other = tdx.tdx_rtmrs(KERNEL, INITRD[:-1] + b"\x00", APPEND)
    accepted = evaluate(make_claims(platform="tdx", registers={"rtmr1": good[1], "rtmr2": good[2]}), policy)
    assert accepted.accepted, accepted.explain()
    refused = evaluate(make_claims(platform="tdx", registers={"rtmr1": other[1], "rtmr2": other[2]}), policy)
    assert not refused.accepted
    assert [row.rule for row in refused.failures()] == ["tdx.rtmr2"]


def make_ccel(events: list[tuple[int, int, bytes]]) -> bytes:
    """A CC event log area: the Spec ID Event03 (SHA-384 only), then one
    TCG_PCR_EVENT2 per (MR index, event type, digest), then 0xFF padding."""
    spec = (
        b"Spec ID Event03\x00"
        + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1)
        + struct.pack("<HH", 0x0C, 48)
        + b"\x00"
    )
    log = struct.pack("<II", 0, tdx.EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for mr_index, event_type, digest in events:
        log += struct.pack("<IIIH", mr_index, event_type, 1, 0x0C) + digest + struct.pack("<I", 4) + b"data"
    return log + b"\xff" * 64


def test_event_log_of_the_expected_boot_matches() -> None:
    events = tdx.tdx_events(KERNEL, INITRD, APPEND)
    log = make_ccel(
        [(1, tdx.EV_EFI_ACTION, tdx.sha384(b"rtmr0 stuff"))]
        + [(e.rtmr + 1, e.event_type, e.digest) for e in events]
    )
    comparison = tdx.compare_event_log(events, log)
    assert comparison.missing == [] and comparison.unexpected == []
    rtmrs = tdx.tdx_rtmrs(KERNEL, INITRD, APPEND)
    assert comparison.replayed[1] == rtmrs[1] and comparison.replayed[2] == rtmrs[2]
    assert comparison.replayed[0] == tdx.replay([tdx.sha384(b"rtmr0 stuff")])


def test_event_log_comparison_names_what_differs(tmp_path: Path) -> None:
    events = tdx.tdx_events(KERNEL, INITRD, APPEND)
    option_rom = (2, 0x80000004, tdx.sha384(b"an option ROM driver"))  # EV_EFI_BOOT_SERVICES_DRIVER, PCR 2
    other_initrd = (3, tdx.EV_EVENT_TAG, tdx.sha384(b"another initrd"))
    log = make_ccel(
        [option_rom] + [(e.rtmr + 1, e.event_type, e.digest) for e in events[:-1]] + [other_initrd]
    )
    comparison = tdx.compare_event_log(events, log)
    assert [e.description for e in comparison.missing] == ["Linux initrd"]
    assert [(e.mr_index, e.digest) for e in comparison.unexpected] == [
        (2, option_rom[2]),
        (3, other_initrd[2]),
    ]

    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    (tmp_path / "initrd.img").write_bytes(INITRD)
    (tmp_path / "cmdline").write_text(APPEND)
    (tmp_path / "ccel").write_bytes(log)
    args = ["--image", str(tmp_path), "--event-log", str(tmp_path / "ccel")]
    text = CliRunner().invoke(tdx_command, args).output
    assert "rtmr1" in text and text.count("DIFFERS from the expected value") == 2
    assert "expected, not in the log: RTMR[2]" in text and "Linux initrd" in text
    assert f"in the log, not expected: RTMR[1] 0x80000004 {option_rom[2].hex()}" in text
    doc = json.loads(CliRunner().invoke(tdx_command, [*args, "--json"]).output)["event_log"]
    assert doc["rtmr1_matches"] is False and doc["rtmr2_matches"] is False
    assert [e["what"] for e in doc["missing"]] == ["Linux initrd"]
    assert len(doc["unexpected"]) == 2
    (tmp_path / "ccel").write_bytes(log[:10])
    bad = CliRunner().invoke(tdx_command, args)
    assert isinstance(bad.exception, MalformedEvidence) and bad.exception.exit_code == 111


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0x84 + 16, struct.pack("<H", 0xFFFF), "optional header (65535 bytes at 0x98) is truncated"),
        (0x84 + 16, struct.pack("<H", 50), "has no data directories"),
    ],
)
def test_malformed_optional_header_is_an_image_error(offset: int, value: bytes, message: str) -> None:
    kernel = bytearray(KERNEL)
    kernel[offset : offset + len(value)] = value
    with pytest.raises(ImageError, match=re.escape(message)):
        tdx.authenticode_digest(bytes(kernel))


def test_qemu_header_patch_refusals() -> None:
    with pytest.raises(ImageError, match="not above the ACPI data size"):
        tdx.QemuHeaderPatch(memory=0x1000).apply(KERNEL, 0, b"")
    ancient = make_kernel(protocol=0x1FF)
    assert tdx.setup_header(ancient).release is None
    with pytest.raises(ImageError, match=r"older than 2\.00 cannot take an initrd"):
        tdx.QemuHeaderPatch(memory=1 << 30).apply(ancient, 4096, b"")
    with pytest.raises(ImageError, match="out of range"):
        tdx.QemuHeaderPatch(memory=1 << 30).apply(KERNEL, 0, b"vga=0x1ffffffff")


def _spec_id(algorithms: list[tuple[int, int]], count: int | None = None) -> bytes:
    n = len(algorithms) if count is None else count
    spec = b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, n)
    spec += b"".join(struct.pack("<HH", a, s) for a, s in algorithms) + b"\x00"
    return struct.pack("<II", 0, tdx.EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (_spec_id([(0x0C, 48)], count=10), "lists more algorithms than it holds"),
        (_spec_id([(0x0B, 32)]), "SHA-384 is not among"),
        (
            _spec_id([(0x0C, 48)]) + struct.pack("<IIIH", 2, 7, 1, 0x0B) + bytes(32),
            "0xb at 0x4d is not declared",
        ),
        (_spec_id([(0x0C, 48)]) + struct.pack("<IIII", 2, 7, 0, 0), "has no SHA-384 digest"),
        (_spec_id([(0x0C, 48)]) + struct.pack("<IIIH", 7, 7, 1, 0x0C) + bytes(48) + bytes(4), "MR index 7"),
    ],
)
def test_event_log_refusals(log: bytes, message: str) -> None:
    with pytest.raises(MalformedEvidence, match=message):
        tdx.parse_cc_event_log(log)


def test_cli_does_not_offer_an_all_zero_rtmr2_as_a_policy_line(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(make_kernel("6.1.0-57-cloud-amd64"))
    refused = CliRunner().invoke(tdx_command, ["--kernel", str(tmp_path / "k")])
    assert isinstance(refused.exception, ImageError) and "only from Linux 6.9" in str(refused.exception)
    forced = CliRunner().invoke(tdx_command, ["--kernel", str(tmp_path / "k"), "--kernel-does-not-measure"])
    assert forced.exit_code == 0, forced.output
    assert tomllib.loads(forced.output).keys() == {"rtmr1"}
    assert f'# rtmr2 = ["{tdx.ZERO.hex()}"]  NOT a policy line' in forced.output


def test_rtmrs_replayed_from_a_published_log_pin_its_verified_quote() -> None:
    """Replay -> policy -> verifier: RTMRs replayed from the GCP TD's event log,
    pinned in a [tdx] table, accept the claims the DCAP verifier produces from
    that boot's real quote, and a pin differing in RTMR[2] refuses them."""
    from intel_support import sample
    from stockade.evidence.intel.verify import verify_quote
    from stockade.policy import evaluate, loads_policy

    gcp = sample("v4-gcp-cos-go-tdx-guest")
    verified = verify_quote(gcp.quote, gcp.collateral, gcp.verify_at, check_revocation=gcp.has_crls)
    replayed = tdx.replay_cc_event_log(CCEL)
    claims = verified.claims
    head = f'version = 1\nplatforms = ["tdx"]\n[tdx]\ntcb_status = ["{claims.tcb_status}"]\n'
    pins = "".join(f'rtmr{i} = ["{replayed[i].hex()}"]\n' for i in range(3))
    accepted = evaluate(claims, loads_policy(head + pins), gcp.verify_at)
    assert accepted.accepted, accepted.explain()
    wrong = pins.replace(replayed[2].hex(), tdx.extend(replayed[2], tdx.sha384(b"another initrd")).hex())
    refused = evaluate(claims, loads_policy(head + wrong), gcp.verify_at)
    assert [row.rule for row in refused.failures()] == ["tdx.rtmr2"]
