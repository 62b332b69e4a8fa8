"""What a Keep binds into the report data of its evidence (ADR 0015).

:mod:`stockade.binding.reportdata`: the client's nonce and the Keep's TLS key
(and, for the second attestation, the event-log register) hashed into the
64-byte report data; :mod:`stockade.binding.eventlog`: the hash-chained event
log whose register the identity binds. Pure computation, no I/O: the Keep
computes these values and the client recomputes them. Below ``wire`` (the
identity message carries events); imports nothing of stockade but errors.
"""
