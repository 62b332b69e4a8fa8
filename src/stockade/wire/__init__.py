"""What travels between client, host and Keep: CBOR messages, framing, the
sans-I/O protocol state machines and the evidence bundle. No I/O (ADR 0015):
the launch measurement is in :mod:`stockade.measure`, the report-data
binding and the event log in :mod:`stockade.binding`."""
