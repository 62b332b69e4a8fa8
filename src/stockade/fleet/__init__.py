"""The fleet: keep managers registered in etcd, and what the client reads
there to place a deploy (issue 16, ADR 0025).

The fleet directory is untrusted data, like everything on the host side:
a record can misdirect or delay a deploy, never make the client accept a
Keep or release a secret (the attestation still decides, against the
deployer's own policy). This package therefore holds no verification code
and imports nothing but :mod:`stockade.errors`:

* :mod:`stockade.fleet.etcd`: connection options (``etcd://`` URLs,
  TLS, user and password) and a small client over the etcd v3 JSON gateway
  (OpenStack's ``etcd3gw``) with endpoint failover; every failure is a
  :class:`~stockade.errors.FleetError` naming etcd.
* :mod:`stockade.fleet.record`: the host record (what a keep manager
  advertises), its strict JSON codec, and the key layout.
"""
