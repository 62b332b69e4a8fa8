"""Launch measurement of a VM Keep booted by the ``vm`` backend (sim signing).

On SEV-SNP with QEMU's ``kernel-hashes=on``, QEMU writes a table of the
SHA-256 digests of the kernel, the initrd and the command line (the "SEV
hashes table", GUID-tagged entries, in QEMU's target/i386/sev.c and OVMF's
BlobVerifierLibSevHashes) into a guest page that the firmware measures at
launch; OVMF refuses to boot a kernel, initrd or command line whose digest
differs from the table. So the launch digest commits to exactly those three
inputs (plus OVMF and the VMSAs: stockade.measure.snp).

The ``vm`` backend has no security processor: the sim PSP signs reports
for it, and the MEASUREMENT it signs is this function's value: the same
table, built by VirTEE's sev-snp-measure (``SevHashes``), measured as one
normal page into an SNP launch digest (``GCTX``, SNP firmware ABI 8.17.2
PAGE_INFO) that starts from the domain-separating seed below. A changed
byte of the kernel, the initrd or the command line changes it; nothing the
host chooses otherwise (acceleration, memory size) does. NO HARDWARE
PROTECTION: whoever runs the host can sign any measurement with the sim
chip. ADR 0018.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Seeds the sim VM launch digest, so that it never equals a real SNP
#: digest of the same table (which starts from 48 zero bytes).
SEED = hashlib.sha384(b"stockade sim-vm launch digest v1").digest()
#: The guest-physical address the table page is measured at (the page
#: below 4 GiB, a fixed choice: it only has to be the same every time).
TABLE_GPA = 0xFFFF_F000


def sim_vm_digest(kernel: Path, initrd: Path | None, append: str) -> bytes:
    """The 48-byte launch digest the sim PSP signs for a ``vm`` Keep."""
    from stockade.measure.snp import sev_hashes_table

    return _digest(sev_hashes_table(kernel, initrd, append))


def sim_vm_digest_of(kernel_sha256: bytes, initrd_sha256: bytes, append: str) -> bytes:
    """:func:`sim_vm_digest` from the SHA-256 digests of the kernel and the
    initrd (an image manifest's, after its files were checked against it:
    the 80 MB are not read again)."""
    from stockade.measure.snp import sev_hashes_table_of

    return _digest(sev_hashes_table_of(kernel_sha256, initrd_sha256, append))


def _digest(table: bytes) -> bytes:
    from sevsnpmeasure.gctx import GCTX

    gctx = GCTX(seed=SEED)
    gctx.update_normal_pages(TABLE_GPA, table + bytes(4096 - len(table)))
    return bytes(gctx.ld())
