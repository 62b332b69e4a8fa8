"""Keep images: the bootable files of a VM Keep, built reproducibly.

A Keep image is a directory holding a Linux kernel (``vmlinuz``), an
initramfs (``initrd.img``) with a minimal init, the Python interpreter and
exactly the measured Keep runtime (stockade.measure.keep_modules), the
kernel command line (``cmdline``) and ``manifest.json`` (component digests,
versions, sizes and the expected launch measurements). stockade.image.build
makes one; stockade.image.manifest reads and checks one. The host's VM keep
loader (stockade.host.vm) boots it; the launch measurement of what it boots
is computed from the same three files (stockade.measure.vm).
"""
