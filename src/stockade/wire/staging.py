"""Packages staged by the host for a Keep (untrusted bytes).

A load request may say ``staged`` instead of carrying the package: the
host provides the bytes through a host-to-Keep channel. On the sim backend
that channel is a file named :data:`STAGED_NAME` in the Keep's scratch
directory, written by the keep manager (``PUT /v1/keeps/{id}/package``) or
a test. Nothing about these bytes is trusted: the Keep measures what it
reads and the client checks the attested digest (docs/package.md).
"""

from __future__ import annotations

STAGED_NAME = "staged.stockade"
#: Largest package a host may stage, and a Keep reads.
MAX_STAGED = 256 * 1024 * 1024
#: Media type of a staged package upload.
PACKAGE_MEDIA_TYPE = "application/vnd.stockade.package"
