"""The launch measurement of the Keep runtime (ADR 0013, ADR 0015).

Reads files: the bytes of every module the Keep may load
(:mod:`stockade.measure.launch` over the generated list
:mod:`stockade.measure.keep_modules`) and the ``.pth`` files of the site
directories (:mod:`stockade.measure.sitecheck`). The host-side loader, the
Keep's import guard and ``stockade policy reference`` use it; verification
code (wire, binding, evidence, policy, package) never imports it.

:mod:`stockade.measure.snp` computes the expected SEV-SNP launch digest of a
Keep image (OVMF, kernel, initrd, command line, vCPUs) offline, with VirTEE's
sev-snp-measure (ADR 0016); the Keep never imports it.
"""
