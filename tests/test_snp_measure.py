"""The expected SEV-SNP launch digest (stockade.measure.snp, ADR 0016).

- sev-snp-measure's published expected values (its tests/test_guest.py at
  v0.0.13, fixtures in tests/data/sev-snp-measure/): 1 and 4 vCPUs, guest
  features 0x1 and 0x21, with and without kernel hashes, a given OVMF hash,
  the QEMU, ec2 and gce VMMs, the AmdSev and the plain OvmfX64 build;
- an independent reference computation written here from the specifications
  (PAGE_INFO chain, OVMF footer table and SEV metadata, QEMU's hashes table,
  the initial VMSA), which reproduces the published values for EPYC-v4 and
  then gives the values for the other vCPU types (upstream publishes EPYC-v4
  only);
- our cases: a changed byte of the kernel, initrd, command line or OVMF
  changes the digest; each bad input is an ImageError (exit 121 through the
  CLI), never a library traceback; `stockade policy reference --platform snp`
  writes a policy that the policy loader reads and that pins the digest.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import uuid
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from stockade.cli import StockadeGroup, main
from stockade.commands.image_measure import measure
from stockade.errors import ImageError
from stockade.measure.snp import (
    MAX_OVMF_SIZE,
    MAX_VCPUS,
    image_boot_inputs,
    parse_guest_features,
    parse_hex,
    sev_hashes_table,
    snp_launch_digest,
    snp_ovmf_hash,
    vcpu_signature,
    vcpu_types,
)
from stockade.policy import load_policy

DATA = Path(__file__).parent / "data" / "sev-snp-measure"
AMDSEV = DATA / "ovmf_AmdSev_suffix.bin"
OVMFX64 = DATA / "ovmf_OvmfX64_suffix.bin"
AMDSEV_OVMF_HASH = (
    "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
)
CONSOLE = "console=ttyS0 loglevel=7"


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    """Upstream measures /dev/null as kernel and initrd: an empty file."""
    path = tmp_path / "empty"
    path.write_bytes(b"")
    return path


# (upstream test name, ovmf, ovmf_hash, direct boot?, append, vcpus, guest features, vmm, expected)
PUBLISHED = [
    ("test_snp_ovmf_hash_gen_default", AMDSEV, AMDSEV_OVMF_HASH, True, "", 1, 0x21, "QEMU",
     "329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198"),
    ("test_snp_ovmf_hash_gen_feature_snp_only", AMDSEV, AMDSEV_OVMF_HASH, True, "", 1, 0x1, "QEMU",
     "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5"),
    ("test_snp_ovmf_hash_full_default", AMDSEV, AMDSEV_OVMF_HASH, True, CONSOLE, 1, 0x21, "QEMU",
     "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"),
    ("test_snp_ovmf_hash_full_feature_snp_only", AMDSEV, AMDSEV_OVMF_HASH, True, CONSOLE, 1, 0x1, "QEMU",
     "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"),
    ("test_snp_ec2_default", AMDSEV, None, True, "", 1, 0x21, "ec2",
     "0ce9ccc06bab55eebe8abc234f3df6514883977a68a591b71052498ab52b2f1aa415db338033946ef93aa8278c0d67fb"),
    ("test_snp_ec2_feature_snp_only", AMDSEV, None, True, "", 1, 0x1, "ec2",
     "0883bd0eeb716e65b7b977a321c278d1e51b33b5c655fab985443bbcc65c086b9c15e8a0bd8811050dec7e24964e5056"),
    ("test_snp_gce_default", AMDSEV, None, True, "", 1, 0x1, "gce",
     "5da7106cf14cf46b1725ebab123eb9e53bd46a1e9f400cd0c08e7827b04b688ea8b4e403c8404efed4397ea5d5d0722e"),
    ("test_snp_gce_with_multiple_vcpus_default", AMDSEV, None, True, "", 4, 0x1, "gce",
     "5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d"),
    ("test_snp_default", AMDSEV, None, True, CONSOLE, 1, 0x21, "QEMU",
     "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"),
    ("test_snp_guest_feature_snp_only", AMDSEV, None, True, CONSOLE, 1, 0x1, "QEMU",
     "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"),
    ("test_snp_without_kernel_default", AMDSEV, None, False, None, 1, 0x21, "QEMU",
     "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"),
    ("test_snp_without_kernel_feature_snp_only", AMDSEV, None, False, None, 1, 0x1, "QEMU",
     "19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d"),
    ("test_snp_with_multiple_vcpus_default", AMDSEV, None, True, "", 4, 0x21, "QEMU",
     "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942"),
    ("test_snp_with_multiple_vcpus_feature_snp_only", AMDSEV, None, True, "", 4, 0x1, "QEMU",
     "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"),
    ("test_snp_with_ovmfx64_without_default", OVMFX64, None, False, None, 1, 0x21, "QEMU",
     "28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385"),
    ("test_snp_with_ovmfx64_without_kernel_feature_snp_only", OVMFX64, None, False, None, 1, 0x1, "QEMU",
     "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005"),
]  # fmt: skip


def fixtures_unchanged() -> None:
    """The fixtures are byte for byte upstream's (README.md gives their SHA-256)."""
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (AMDSEV, OVMFX64)}
    assert sums == {
        "ovmf_AmdSev_suffix.bin": "8f765dfabc127fc0a938a0744a3103ec15864d7d794eb4c398aa976b6d6ab16c",
        "ovmf_OvmfX64_suffix.bin": "b4c021e085fb83ceffe6571a3d357b4a98773c83c474e47f76c876708fe316da",
    }


def test_fixtures_are_upstreams() -> None:
    fixtures_unchanged()
    readme = (DATA / "README.md").read_text()
    assert "5b6a79e86641a7ca1a377ba1848d1dcdc2498494" in readme
    assert "Apache License" in (DATA / "LICENSE").read_text()


@pytest.mark.parametrize(
    ("ovmf", "ovmf_hash", "boot", "append", "vcpus", "features", "vmm", "expected"),
    [case[1:] for case in PUBLISHED],
    ids=[case[0] for case in PUBLISHED],
)
def test_published_values(
    empty: Path,
    ovmf: Path,
    ovmf_hash: str | None,
    boot: bool,
    append: str | None,
    vcpus: int,
    features: int,
    vmm: str,
    expected: str,
) -> None:
    digest = snp_launch_digest(
        ovmf,
        kernel=empty if boot else None,
        initrd=empty if boot else None,
        append=append,
        vcpus=vcpus,
        vcpu_type="EPYC-v4",
        guest_features=features,
        ovmf_hash=bytes.fromhex(ovmf_hash) if ovmf_hash else None,
        vmm_type=vmm,
    )
    assert digest.hex() == expected


def test_published_ovmf_hash() -> None:
    # upstream test_snp_ovmf_hash_full_default: calc_snp_ovmf_hash of the AmdSev fixture
    assert snp_ovmf_hash(AMDSEV).hex() == AMDSEV_OVMF_HASH


def test_published_values_through_the_cli(empty: Path) -> None:
    result = invoke(
        "--ovmf", AMDSEV, "--kernel", empty, "--initrd", empty, "--append", CONSOLE,
        "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "0x21",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == PUBLISHED[8][-1] + "\n"  # test_snp_default


def test_vmm_without_vcpu_signature_ignores_the_vcpu_type(empty: Path) -> None:
    """ec2 and gce put a fixed RDX (0x600) in the VMSA: upstream measures gce
    with no vCPU signature at all; any type gives its published value."""
    for vcpu_type in ("EPYC-v4", "EPYC-Milan", "EPYC-Genoa"):
        digest = snp_launch_digest(
            AMDSEV, kernel=empty, initrd=empty, append="", vcpus=4, vcpu_type=vcpu_type, vmm_type="gce"
        )
        assert digest.hex() == PUBLISHED[7][-1]


# --- an independent reference computation, from the specifications ---------

PAGE = 4096


def _guid(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def footer_table(fw: bytes) -> dict[bytes, bytes]:
    """OVMF's GUIDed footer table: it ends 32 bytes before the end of the
    firmware; each entry is (data, u16 size, GUID) read backwards, the table
    itself an entry with GUID 96b582de-... (edk2 OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm)."""
    end = len(fw) - 32
    size, guid = struct.unpack_from("<H16s", fw, end - 18)
    assert guid == _guid("96b582de-1fb2-45f7-baea-a366c55a082d")
    table, entries = fw[end - size : end - 18], {}
    while table:
        size, guid = struct.unpack_from("<H16s", table, len(table) - 18)
        entries[guid] = table[len(table) - size : len(table) - 18]
        table = table[: len(table) - size]
    return entries


def sev_metadata(fw: bytes, table: dict[bytes, bytes]) -> list[tuple[int, int, int]]:
    """(GPA, size, type) of each section (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm)."""
    start = len(fw) - struct.unpack_from("<I", table[_guid("dc886566-984a-4798-a75e-5585a7bf67cc")])[0]
    signature, _size, version, count = struct.unpack_from("<4sIII", fw, start)
    assert (signature, version) == (b"ASEV", 1)
    return [struct.unpack_from("<III", fw, start + 16 + 12 * i) for i in range(count)]


def hashes_table(kernel: bytes, initrd: bytes, append: str) -> bytes:
    """QEMU's SEV hashes table (target/i386/sev.c, SevHashTable): header GUID and
    length, then cmdline, initrd, kernel entries (GUID, u16 length 50, SHA-256);
    the command line with its terminating NUL; padded to 16 bytes."""

    def entry(guid: str, data: bytes) -> bytes:
        return _guid(guid) + struct.pack("<H", 50) + hashlib.sha256(data).digest()

    body = (
        entry("97d02dd8-bd20-4c94-aa78-e7714d36ab2a", append.encode() + b"\0")
        + entry("44baf731-3a2f-4bd7-9af1-41e29169781d", initrd)
        + entry("4de79437-abd2-427f-b835-d5b172d2045b", kernel)
    )
    table = _guid("9438d606-4f22-4cc9-b479-a793d411fd21") + struct.pack("<H", 18 + len(body)) + body
    return table + bytes(-len(table) % 16)


def vmsa(eip: int, vcpu_sig: int, features: int) -> bytes:
    """A QEMU vCPU's initial VMSA (AMD APM Vol. 2, Table B-4 "VMSA Layout";
    Linux arch/x86/include/asm/svm.h struct sev_es_save_area for the offsets;
    QEMU/KVM reset state: CS F000 with base from EIP, RDX the CPUID signature)."""
    page = bytearray(PAGE)

    def seg(offset: int, selector: int, attrib: int, base: int) -> None:
        struct.pack_into("<HHIQ", page, offset, selector, attrib, 0xFFFF, base)

    for offset, attrib in ((0x00, 0x93), (0x20, 0x93), (0x30, 0x93), (0x40, 0x93), (0x50, 0x93)):
        seg(offset, 0, attrib, 0)  # es, ss, ds, fs, gs
    seg(0x10, 0xF000, 0x9B, eip & 0xFFFF0000)  # cs
    seg(0x60, 0, 0, 0)  # gdtr
    seg(0x70, 0, 0x82, 0)  # ldtr
    seg(0x80, 0, 0, 0)  # idtr
    seg(0x90, 0, 0x8B, 0)  # tr
    for offset, value in (
        (0xD0, 0x1000),  # efer: SVME
        (0x148, 0x40),  # cr4: MCE
        (0x158, 0x10),  # cr0: ET
        (0x160, 0x400),  # dr7
        (0x168, 0xFFFF0FF0),  # dr6
        (0x170, 0x2),  # rflags
        (0x178, eip & 0xFFFF),  # rip
        (0x268, 0x0007040600070406),  # g_pat (power-on PAT)
        (0x310, vcpu_sig),  # rdx
        (0x3B0, features),  # sev_features
        (0x3E8, 0x1),  # xcr0
    ):
        struct.pack_into("<Q", page, offset, value)
    struct.pack_into("<I", page, 0x408, 0x1F80)  # mxcsr
    struct.pack_into("<H", page, 0x410, 0x37F)  # x87 fcw
    return bytes(page)


def reference_digest(
    fw: bytes, boot: tuple[bytes, bytes, str] | None, vcpus: int, vcpu_sig: int, features: int
) -> bytes:
    """SNP launch digest: SHA-384 over PAGE_INFO (current digest, page digest,
    u16 length 0x70, u8 page type, u8 IMI, VMPL permissions, u64 GPA) per page
    (AMD pub. 56860, "PAGE_INFO"; page types 1 normal, 2 VMSA, 3 zero,
    5 secrets, 6 CPUID)."""
    ld = bytes(48)

    def update(page_type: int, gpa: int, contents: bytes) -> None:
        nonlocal ld
        ld = hashlib.sha384(ld + contents + struct.pack("<HBB4xQ", 0x70, page_type, 0, gpa)).digest()

    base = (1 << 32) - len(fw)
    for off in range(0, len(fw), PAGE):
        update(1, base + off, hashlib.sha384(fw[off : off + PAGE]).digest())
    table = footer_table(fw)
    for gpa, size, kind in sev_metadata(fw, table):
        if kind == 0x10 and boot is not None:
            at = struct.unpack_from("<I", table[_guid("7255371f-3a3b-4b04-927b-1da6efa8d454")])[0] % PAGE
            ht = hashes_table(*boot)
            update(1, gpa, hashlib.sha384(bytes(at) + ht + bytes(PAGE - at - len(ht))).digest())
        elif kind in (1, 4, 0x10):  # SEC memory, SVSM CAA, hashes page without direct boot: zero pages
            for off in range(0, size, PAGE):
                update(3, gpa + off, bytes(48))
        else:
            update({2: 5, 3: 6}[kind], gpa, bytes(48))
    ap_eip = struct.unpack_from("<I", table[_guid("00f771de-1a7e-4fcb-890e-68c77e2fb44e")])[0]
    for i in range(vcpus):
        update(
            2,
            0xFFFFFFFFF000,
            hashlib.sha384(vmsa(0xFFFFFFF0 if i == 0 else ap_eip, vcpu_sig, features)).digest(),
        )
    return ld


@pytest.mark.parametrize("case", [c for c in PUBLISHED if c[7] == "QEMU"], ids=lambda c: c[0])
def test_reference_reproduces_the_published_values(case: tuple[object, ...]) -> None:
    """The reference above is right where upstream publishes values (QEMU, EPYC-v4)."""
    _name, ovmf, _hash, boot, append, vcpus, features, _vmm, expected = case
    assert isinstance(ovmf, Path) and isinstance(vcpus, int) and isinstance(features, int)
    inputs = (b"", b"", str(append or "")) if boot else None
    assert reference_digest(ovmf.read_bytes(), inputs, vcpus, 0x00800F12, features).hex() == expected


#: QEMU CPU model -> CPUID Fn0000_0001_EAX (AMD pub. 25481 "CPUID Specification":
#: family 17h/19h/1Ah encoded as base F plus extended family; QEMU
#: target/i386/cpu.c builtin_x86_defs gives each model's family/model/stepping).
SIGNATURES = {
    "EPYC-v4": 0x00800F12,  # family 17h model 01h stepping 2 (Naples)
    "EPYC-Rome": 0x00830F10,  # 17h, 31h, 0
    "EPYC-Milan": 0x00A00F11,  # 19h, 01h, 1
    "EPYC-Genoa": 0x00A10F10,  # 19h, 11h, 0
    "EPYC-Turin": 0x00B00F00,  # 1Ah, 00h, 0 (as QEMU's model)
}


@pytest.mark.parametrize("vcpu_type", list(SIGNATURES))
@pytest.mark.parametrize("vcpus", [1, 2, 3, 8])
def test_other_vcpu_types_and_counts_match_the_reference(tmp_path: Path, vcpu_type: str, vcpus: int) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"MZ kernel " * 100)
    initrd.write_bytes(b"070701 initrd " * 300)
    assert vcpu_signature(vcpu_type) == SIGNATURES[vcpu_type]
    for features in (0x1, 0x21):
        ours = snp_launch_digest(
            AMDSEV, kernel=kernel, initrd=initrd, append=CONSOLE, vcpus=vcpus,
            vcpu_type=vcpu_type, guest_features=features,
        )  # fmt: skip
        ref = reference_digest(
            AMDSEV.read_bytes(), (kernel.read_bytes(), initrd.read_bytes(), CONSOLE), vcpus,
            SIGNATURES[vcpu_type], features,
        )  # fmt: skip
        assert ours == ref
        no_boot = snp_launch_digest(
            AMDSEV,
            kernel=None,
            initrd=None,
            append=None,
            vcpus=vcpus,
            vcpu_type=vcpu_type,
            guest_features=features,
        )
        assert no_boot == reference_digest(AMDSEV.read_bytes(), None, vcpus, SIGNATURES[vcpu_type], features)


def test_sev_hashes_table_matches_the_reference(image: Path, empty: Path) -> None:
    kernel, initrd = image / "vmlinuz", image / "initrd.img"
    append = (image / "cmdline").read_text()
    table = sev_hashes_table(kernel, initrd, append)
    assert table == hashes_table(kernel.read_bytes(), initrd.read_bytes(), append)
    assert len(table) == 176
    assert sev_hashes_table(kernel, None, None) == hashes_table(kernel.read_bytes(), b"", "")
    with pytest.raises(ImageError, match="initrd: cannot read"):
        sev_hashes_table(kernel, image / "nope", append)
    with pytest.raises(ImageError, match="contains a line break"):
        sev_hashes_table(kernel, initrd, "a\nb")


def test_vcpu_type_changes_the_digest_and_aliases_do_not(empty: Path) -> None:
    def digest(vcpu_type: str, vcpus: int = 2) -> bytes:
        return snp_launch_digest(
            AMDSEV, kernel=empty, initrd=empty, append="", vcpus=vcpus, vcpu_type=vcpu_type
        )

    assert len({digest(t) for t in SIGNATURES}) == len(SIGNATURES)
    assert digest("EPYC") == digest("EPYC-v4") == digest("EPYC-IBPB")  # same CPUID signature
    assert digest("EPYC-Milan") == digest("EPYC-Milan-v2")
    assert len({digest("EPYC-Genoa", n) for n in (1, 2, 3, 4)}) == 4
    assert set(SIGNATURES) <= set(vcpu_types())


# --- our own cases: what changes the digest ---------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A Keep image directory as `stockade image build` writes it (small stand-ins)."""
    d = tmp_path / "image"
    d.mkdir()
    (d / "vmlinuz").write_bytes(bytes(range(256)) * 64)
    (d / "initrd.img").write_bytes(b"070701" + bytes(5000))
    (d / "cmdline").write_text("console=hvc0 quiet stockade.keep=1")
    (d / "manifest.json").write_text("{}")
    return d


def image_digest(image: Path, ovmf: Path = AMDSEV) -> bytes:
    boot = image_boot_inputs(image)
    return snp_launch_digest(
        ovmf, kernel=boot.kernel, initrd=boot.initrd, append=boot.append, vcpus=2, vcpu_type="EPYC-Milan"
    )


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["vmlinuz", "initrd.img", "cmdline"])
@pytest.mark.parametrize("where", ["first", "last"])
def test_a_changed_byte_of_the_image_changes_the_digest(image: Path, name: str, where: str) -> None:
    before = image_digest(image)
    path = image / name
    flip(path, 0 if where == "first" else path.stat().st_size - 1)
    after = image_digest(image)
    assert after != before
    flip(path, 0 if where == "first" else path.stat().st_size - 1)
    assert image_digest(image) == before  # and only that byte: restored, same digest


def test_a_changed_byte_of_ovmf_changes_the_digest(image: Path, tmp_path: Path) -> None:
    ovmf = tmp_path / "OVMF.fd"
    ovmf.write_bytes(AMDSEV.read_bytes())
    before = image_digest(image, ovmf)
    flip(ovmf, 100)  # a code byte, outside the footer table
    assert image_digest(image, ovmf) != before


def test_the_image_directory_and_the_separate_files_measure_the_same(image: Path) -> None:
    digest = snp_launch_digest(
        AMDSEV, kernel=image / "vmlinuz", initrd=image / "initrd.img",
        append=(image / "cmdline").read_text(), vcpus=2, vcpu_type="EPYC-Milan",
    )  # fmt: skip
    assert digest == image_digest(image)


def test_an_empty_command_line_is_one_nul_like_none(empty: Path) -> None:
    def digest(append: str | None) -> bytes:
        return snp_launch_digest(
            AMDSEV, kernel=empty, initrd=empty, append=append, vcpus=1, vcpu_type="EPYC-v4"
        )

    assert digest("") == digest(None) != digest(" ")


def test_no_initrd_is_an_empty_initrd(empty: Path, image: Path) -> None:
    kernel = image / "vmlinuz"
    args = {"append": "x", "vcpus": 1, "vcpu_type": "EPYC-v4"}
    assert snp_launch_digest(AMDSEV, kernel=kernel, initrd=None, **args) == snp_launch_digest(  # type: ignore[arg-type]
        AMDSEV,
        kernel=kernel,
        initrd=empty,
        **args,  # type: ignore[arg-type]
    )


# --- bad inputs: ImageError, one line, exit 121 through the CLI -------------


def cli() -> click.Group:
    """The measure group under `stockade image`, inside the CLI's error boundary
    (the integrator attaches it to the real `image` group)."""
    root = StockadeGroup(name="stockade")
    image_group = click.Group(name="image")
    image_group.add_command(measure)
    root.add_command(image_group)
    return root


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(
        cli(), ["image", "measure", "snp", *(str(a) for a in args)], catch_exceptions=False
    )


def corrupt(tmp_path: Path, name: str, source: Path, old: bytes, new: bytes) -> Path:
    data = source.read_bytes()
    assert data.count(old) == 1
    path = tmp_path / name
    path.write_bytes(data.replace(old, new))
    return path


def bad_ovmfs(tmp_path: Path) -> dict[str, tuple[Path, bool, str]]:
    """name -> (OVMF file, direct boot?, expected message part)."""
    no_table = tmp_path / "no-table.fd"
    no_table.write_bytes(bytes(PAGE))
    odd = tmp_path / "odd-size.fd"
    odd.write_bytes(AMDSEV.read_bytes() + b"\0")
    empty_fw = tmp_path / "empty.fd"
    empty_fw.write_bytes(b"")
    huge = tmp_path / "huge.fd"
    with huge.open("wb") as f:  # sparse: no disk space used
        f.truncate(MAX_OVMF_SIZE + PAGE)
    return {
        "missing": (tmp_path / "nope.fd", False, "cannot read"),
        "directory": (tmp_path, False, "cannot read"),
        "empty": (empty_fw, False, "not a positive multiple of 4096"),
        "odd-size": (odd, False, "not a positive multiple of 4096"),
        "too-large": (huge, False, f"larger than {MAX_OVMF_SIZE} bytes: not an OVMF image"),
        "no-footer-table": (no_table, False, "no SEV metadata"),
        "no-sev-metadata": (
            corrupt(tmp_path, "no-meta.fd", AMDSEV, _guid("dc886566-984a-4798-a75e-5585a7bf67cc"), bytes(16)),
            False,
            "no SEV metadata",
        ),
        "bad-metadata-signature": (
            corrupt(tmp_path, "asev.fd", AMDSEV, b"ASEV", b"XSEV"),
            False,
            "malformed GUIDed footer table or SEV metadata",
        ),
        "no-reset-block": (
            corrupt(tmp_path, "reset.fd", AMDSEV, _guid("00f771de-1a7e-4fcb-890e-68c77e2fb44e"), bytes(16)),
            False,
            "no SEV-ES reset block",
        ),
        "no-kernel-hashes-section": (OVMFX64, True, "no SNP_KERNEL_HASHES section"),
        "no-hashes-table-guid": (
            corrupt(tmp_path, "ht.fd", AMDSEV, _guid("7255371f-3a3b-4b04-927b-1da6efa8d454"), bytes(16)),
            True,
            "no SEV hashes table address (SEV_HASH_TABLE_RV_GUID)",
        ),
        "unaligned-section": (
            corrupt(
                tmp_path,
                "align.fd",
                AMDSEV,
                struct.pack("<III", 0x800000, 0x9000, 1),
                struct.pack("<III", 0x800000, 0x9001, 1),
            ),
            False,
            "SEV metadata section at GPA 0x800000, size 0x9001 is not page aligned",
        ),
        "hashes-section-too-large": (
            corrupt(
                tmp_path,
                "ht2.fd",
                AMDSEV,
                struct.pack("<III", 0x810000, 0x1000, 0x10),
                struct.pack("<III", 0x810000, 0x2000, 0x10),
            ),
            True,
            "the SNP_KERNEL_HASHES section (GPA 0x810000, size 0x2000) cannot hold the hashes table",
        ),
        "unknown-section-type": (
            corrupt(
                tmp_path,
                "type.fd",
                AMDSEV,
                struct.pack("<III", 0x810000, 0x1000, 0x10),
                struct.pack("<III", 0x810000, 0x1000, 0x77),
            ),
            False,
            "SEV metadata section of unknown type 0x77",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing", "directory", "empty", "odd-size", "too-large", "no-footer-table", "no-sev-metadata",
        "bad-metadata-signature", "no-reset-block", "no-kernel-hashes-section", "no-hashes-table-guid",
        "unaligned-section", "hashes-section-too-large", "unknown-section-type",
    ],
)  # fmt: skip
def test_bad_ovmf(tmp_path: Path, image: Path, case: str) -> None:
    ovmf, boot, message = bad_ovmfs(tmp_path)[case]
    with pytest.raises(ImageError, match=re.escape(message)):
        snp_launch_digest(
            ovmf,
            kernel=image / "vmlinuz" if boot else None,
            initrd=None,
            append=None,
            vcpus=1,
            vcpu_type="EPYC-v4",
        )
    extra = ["--image", image] if boot else []
    result = invoke("--ovmf", ovmf, *extra, "--vcpus", "1", "--vcpu-type", "EPYC-v4")
    assert result.exit_code == 121
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_plain_ovmf_build_measures_without_direct_boot_only(image: Path) -> None:
    # upstream test_snp_with_ovmfx64_and_kernel_should_fail, as an ImageError
    snp_launch_digest(OVMFX64, kernel=None, initrd=None, append=None, vcpus=1, vcpu_type="EPYC-v4")
    with pytest.raises(ImageError, match="no SNP_KERNEL_HASHES section"):
        snp_launch_digest(
            OVMFX64, kernel=image / "vmlinuz", initrd=None, append=None, vcpus=1, vcpu_type="EPYC-v4"
        )


def bad_cli_cases(tmp_path: Path, image: Path) -> dict[str, tuple[list[str | Path], str]]:
    no_cmdline = tmp_path / "no-cmdline"
    no_cmdline.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (no_cmdline / name).write_bytes(b"x")
    latin1 = tmp_path / "latin1"
    latin1.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (latin1 / name).write_bytes(b"x")
    (latin1 / "cmdline").write_bytes(b"console=ttyS0 caf\xe9")
    two_lines = tmp_path / "two-lines"
    two_lines.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (two_lines / name).write_bytes(b"x")
    (two_lines / "cmdline").write_text("console=ttyS0\n")
    no_initrd = tmp_path / "no-initrd"
    no_initrd.mkdir()
    (no_initrd / "vmlinuz").write_bytes(b"x")
    (no_initrd / "cmdline").write_text("x")
    base: list[str | Path] = ["--ovmf", AMDSEV]
    good = [*base, "--image", image]
    return {
        "unknown-vcpu-type": (
            [*good, "--vcpus", "1", "--vcpu-type", "EPYC-v9"],
            "unknown vCPU type 'EPYC-v9'",
        ),
        "vcpus-zero": (
            [*good, "--vcpus", "0", "--vcpu-type", "EPYC-v4"],
            "vCPUs: expected an integer from 1",
        ),
        "vcpus-negative": (
            [*good, "--vcpus", "-3", "--vcpu-type", "EPYC-v4"],
            "vCPUs: expected an integer from 1",
        ),
        "vcpus-too-many": (
            [*good, "--vcpus", str(MAX_VCPUS + 1), "--vcpu-type", "EPYC-v4"],
            "vCPUs: expected an integer from 1",
        ),
        "ovmf-hash-not-hex": (
            [*good, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf-hash", "zz" * 48],
            "--ovmf-hash: not hexadecimal",
        ),
        "ovmf-hash-short": (
            [*good, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf-hash", "ab" * 32],
            "--ovmf-hash: expected 48 bytes (96 hex digits), got 32 bytes",
        ),
        "guest-features-not-hex": (
            [*good, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "0xg1"],
            "guest features: expected a 64-bit hex value",
        ),
        "guest-features-too-wide": (
            [*good, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "0x1" + "0" * 16],
            "guest features: expected a 64-bit hex value",
        ),
        "unknown-vmm": (
            [*good, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--vmm-type", "xen"],
            "unknown VMM type 'xen'",
        ),
        "missing-kernel": (
            [*base, "--kernel", tmp_path / "nope", "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "kernel: cannot read",
        ),
        "missing-initrd": (
            [
                *base,
                "--kernel",
                image / "vmlinuz",
                "--initrd",
                tmp_path / "nope",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC-v4",
            ],
            "initrd: cannot read",
        ),
        "initrd-without-kernel": (
            [*base, "--initrd", image / "initrd.img", "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "only with a kernel",
        ),
        "append-without-kernel": (
            [*base, "--append", "quiet", "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "only with a kernel",
        ),
        "append-with-nul": (
            [
                *base,
                "--kernel",
                image / "vmlinuz",
                "--append",
                "a\0b",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC-v4",
            ],
            "contains a NUL",
        ),
        "image-missing": (
            [*base, "--image", tmp_path / "nope", "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "not a directory",
        ),
        "image-no-cmdline": (
            [*base, "--image", no_cmdline, "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "cannot read",
        ),
        "image-no-initrd": (
            [*base, "--image", no_initrd, "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "no file initrd.img",
        ),
        "image-cmdline-not-utf8": (
            [*base, "--image", latin1, "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "cmdline is not UTF-8 (byte 17)",
        ),
        "image-cmdline-newline": (
            [*base, "--image", two_lines, "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "contains a line break at character 13",
        ),
        "image-and-kernel": (
            [*good, "--kernel", image / "vmlinuz", "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
            "do not also give --kernel",
        ),
    }


BAD_CLI = [
    "unknown-vcpu-type", "vcpus-zero", "vcpus-negative", "vcpus-too-many", "ovmf-hash-not-hex",
    "ovmf-hash-short", "guest-features-not-hex", "guest-features-too-wide", "unknown-vmm", "missing-kernel",
    "missing-initrd", "initrd-without-kernel", "append-without-kernel", "append-with-nul", "image-missing",
    "image-no-cmdline", "image-no-initrd", "image-cmdline-not-utf8", "image-cmdline-newline", "image-and-kernel",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CLI)
def test_bad_input_exits_121_with_one_line(tmp_path: Path, image: Path, case: str) -> None:
    args, message = bad_cli_cases(tmp_path, image)[case]
    result = invoke(*args)
    assert result.exit_code == 121, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("stockade: Keep image error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def test_bad_input_as_json(image: Path) -> None:
    result = invoke("--ovmf", AMDSEV, "--image", image, "--vcpus", "0", "--vcpu-type", "EPYC-v4", "--json")
    assert result.exit_code == 121
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 121
    assert doc["error"]["type"] == "keep-image"


def test_library_level_bad_values() -> None:
    """Inputs the CLI cannot produce but a Python caller can."""
    call = {"kernel": None, "initrd": None, "append": None, "vcpu_type": "EPYC-v4"}
    for vcpus in (True, 1.0, "2"):
        with pytest.raises(ImageError, match="vCPUs"):
            snp_launch_digest(AMDSEV, vcpus=vcpus, **call)  # type: ignore[arg-type]
    for features in (-1, 1 << 64, True):
        with pytest.raises(ImageError, match="guest features"):
            snp_launch_digest(AMDSEV, vcpus=1, guest_features=features, **call)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="OVMF hash: expected 48 bytes, got 47"):
        snp_launch_digest(AMDSEV, vcpus=1, ovmf_hash=bytes(47), **call)  # type: ignore[arg-type]
    assert parse_hex("0xABcd", "x") == b"\xab\xcd"
    assert parse_guest_features("0x21") == parse_guest_features("21") == 0x21
    with pytest.raises(ImageError, match="expected 2 bytes"):
        parse_hex("abcdef", "x", 2)


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (RuntimeError("unexpected"), "SEV-SNP launch digest: RuntimeError: unexpected"),
        (AssertionError(), "SEV-SNP launch digest: AssertionError"),
        (FileNotFoundError(2, "No such file or directory", "/gone/vmlinuz"), "cannot read /gone/vmlinuz"),
        (b"short", "expected 48 bytes from sev-snp-measure"),
    ],
)
def test_a_library_failure_is_still_an_image_error(
    monkeypatch: pytest.MonkeyPatch, empty: Path, outcome: object, message: str
) -> None:
    """Failures our checks should have prevented (a file removed meanwhile, a
    library change) still end as one ImageError line."""
    import sevsnpmeasure.guest

    def fake(*_args: object, **_kwargs: object) -> object:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(sevsnpmeasure.guest, "snp_calc_launch_digest", fake)
    with pytest.raises(ImageError, match=re.escape(message)):
        snp_launch_digest(AMDSEV, kernel=empty, initrd=empty, append="", vcpus=1, vcpu_type="EPYC-v4")


def test_json_output_names_every_input(image: Path) -> None:
    result = invoke("--ovmf", AMDSEV, "--image", image, "--vcpus", "2", "--vcpu-type", "EPYC-Milan", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["measurement"] == image_digest(image).hex()
    inputs = doc["inputs"]
    assert inputs["ovmf"]["sha256"] == hashlib.sha256(AMDSEV.read_bytes()).hexdigest()
    assert inputs["kernel"]["sha256"] == hashlib.sha256((image / "vmlinuz").read_bytes()).hexdigest()
    assert inputs["initrd"]["sha256"] == hashlib.sha256((image / "initrd.img").read_bytes()).hexdigest()
    assert inputs["append"] == (image / "cmdline").read_text()
    assert inputs["append_sha256"] == hashlib.sha256((image / "cmdline").read_bytes() + b"\0").hexdigest()
    assert (inputs["vcpus"], inputs["vcpu_type"], inputs["guest_features"]) == (2, "EPYC-Milan", "0x1")


# --- stockade policy reference --platform snp --------------------------------


def policy_reference(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["policy", "reference", *(str(a) for a in args)], catch_exceptions=False)


def test_policy_reference_writes_a_loadable_policy_pinning_the_digest(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.toml"
    result = policy_reference(
        "--platform", "snp", "--image", image, "--ovmf", AMDSEV, "--vcpus", "2", "--vcpu-type", "EPYC-Milan",
        "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    policy = load_policy(out)
    assert policy.platforms == ("snp",)
    (rule,) = next(r for r in policy.rules if r.rule == "snp").rules  # type: ignore[attr-defined]
    assert rule.rule == "snp.measurements"
    assert rule.values == (image_digest(image),)
    # stdout gives the same policy
    again = policy_reference(
        "--platform", "snp", "--image", image, "--ovmf", AMDSEV, "--vcpus", "2", "--vcpu-type", "EPYC-Milan"
    )
    assert again.stdout == out.read_text()


def test_policy_reference_policy_accepts_and_refuses_by_measurement(image: Path, tmp_path: Path) -> None:
    from stockade.policy import evaluate
    from stockade.testing.claims import make_claims

    out = tmp_path / "keep.toml"
    policy_reference(
        "--platform", "snp", "--image", image, "--ovmf", AMDSEV, "--vcpus", "2", "--vcpu-type", "EPYC-Milan",
        "-o", out,
    )  # fmt: skip
    policy = load_policy(out)
    assert evaluate(make_claims(measurement=image_digest(image)), policy).accepted
    flip(image / "initrd.img", 10)
    refused = evaluate(make_claims(measurement=image_digest(image)), policy)
    assert not refused.accepted
    assert [r.rule for r in refused.failures()] == ["snp.measurements"]


def test_policy_reference_snp_json(image: Path) -> None:
    result = policy_reference(
        "--platform", "snp", "--image", image, "--ovmf", AMDSEV, "--vcpus", "2", "--vcpu-type", "EPYC-Milan",
        "--json",
    )  # fmt: skip
    doc = json.loads(result.stdout)
    assert doc["platform"] == "snp"
    assert doc["measurement"] == image_digest(image).hex()
    assert doc["measurement"] in doc["policy"]


def test_policy_reference_default_is_still_sim() -> None:
    doc = json.loads(policy_reference("--json").stdout)
    assert doc["platform"] == "sim"
    assert doc["hardware_protection"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--platform", "snp", "--ovmf", AMDSEV, "--vcpus", "1"],
            "--platform snp needs --image, --vcpu-type",
        ),
        (["--vcpus", "2", "--vcpu-type", "EPYC-v4"], "--vcpus, --vcpu-type: only with --platform snp"),
        (["--platform", "sim", "--ovmf", AMDSEV], "--ovmf: only with --platform snp"),
    ],
)
def test_policy_reference_usage_errors(args: list[str | Path], message: str) -> None:
    result = policy_reference(*args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_policy_reference_bad_image_exits_121(tmp_path: Path) -> None:
    result = policy_reference(
        "--platform",
        "snp",
        "--image",
        tmp_path / "nope",
        "--ovmf",
        AMDSEV,
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
    )
    assert result.exit_code == 121
    assert "not a directory" in result.stderr
