"""Names of the virtio-serial ports between a VM Keep and its host.

The host's VM keep loader (stockade.host.vm) gives QEMU one port per name,
each backed by a host socket; the Keep in the guest finds them by name
(stockade.keep.vmguest). Both sides import the names from here.
"""

#: The byte stream to the client (relayed by the host like a process Keep's).
CONN_PORT = "stockade.conn"
#: The sim PSP's channel (backend ``vm`` only: NO HARDWARE PROTECTION).
PSP_PORT = "stockade.psp"
