"""Launch digest of the Keep runtime: what the sim PSP reports as MEASUREMENT.

The keep loader computes this over the code it is about to start, the way a
hypervisor feeds the pages of a guest image to the AMD PSP during
SNP_LAUNCH_UPDATE; the PSP (or the sim PSP) records the result in the
MEASUREMENT field. ``stockade policy reference`` computes the same value, so a
deployer can pin the expected measurement of a given stockade release.

The digest covers every Python file of the packages the Keep runtime loads
(``keep``, ``wire``, ``evidence``) and the top-level modules it needs, each as
(relative path, SHA-384 of content), plus the versions of the Python
interpreter and of the libraries whose code runs inside the Keep. Changing any
of them changes the measurement.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Iterable
from pathlib import Path

DOMAIN = b"stockade-launch/v1\x00"
RUNTIME_PACKAGES = ("keep", "wire", "evidence")
RUNTIME_MODULES = ("__init__.py", "errors.py")
#: distribution name -> top-level module, for the libraries whose code runs
#: inside the Keep.
RUNTIME_DISTRIBUTIONS = {
    "wasmtime": "wasmtime",
    "cryptography": "cryptography",
    "cbor2": "cbor2",
    "pyOpenSSL": "OpenSSL",
}


def package_root() -> Path:
    """Directory of the installed ``stockade`` package."""
    return Path(__file__).resolve().parent.parent


def runtime_files(root: Path | None = None) -> list[tuple[str, bytes]]:
    """(relative path, content) of every file that makes up the Keep runtime."""
    root = root or package_root()
    paths: list[Path] = [root / name for name in RUNTIME_MODULES]
    for pkg in RUNTIME_PACKAGES:
        paths.extend(p for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    return sorted((p.relative_to(root).as_posix(), p.read_bytes()) for p in paths)


def _dist_info(dist: str, module: str) -> tuple[str, bytes]:
    """(version, RECORD bytes) of an installed distribution, found next to
    its top-level module without importing it (importlib.metadata alone
    costs tens of milliseconds at start-up). RECORD lists the SHA-256 of
    every installed file, so hashing it binds the exact build installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{dist} is not installed")
    site = Path(next(iter(spec.submodule_search_locations))).parent
    norm = re.sub(r"[-_.]+", "_", dist).lower()
    for entry in site.glob("*.dist-info"):
        name, _, version = entry.name.removesuffix(".dist-info").partition("-")
        if re.sub(r"[-_.]+", "_", name).lower() == norm:
            record = entry / "RECORD"
            return version, record.read_bytes() if record.exists() else b""
    raise RuntimeError(f"no dist-info for {dist} in {site}")


def runtime_versions() -> dict[str, str]:
    """Interpreter and library versions, each library with the SHA-384 of
    its installed-files RECORD."""
    versions = {"python": ".".join(map(str, sys.version_info[:3])), "implementation": sys.implementation.name}
    for dist, module in RUNTIME_DISTRIBUTIONS.items():
        version, record = _dist_info(dist, module)
        versions[dist] = f"{version} record-sha384:{hashlib.sha384(record).hexdigest()}"
    return versions


def launch_digest(files: Iterable[tuple[str, bytes]], versions: dict[str, str]) -> bytes:
    """SHA-384 launch digest (48 bytes, the size of SNP MEASUREMENT)."""
    h = hashlib.sha384(DOMAIN)
    for name, content in sorted(files):
        encoded = name.encode()
        h.update(len(encoded).to_bytes(4, "big") + encoded)
        h.update(hashlib.sha384(content).digest())
    for key in sorted(versions):
        h.update(f"{key}={versions[key]}\n".encode())
    return h.digest()


def keep_measurement(root: Path | None = None) -> bytes:
    """The measurement of the Keep runtime installed at ``root``."""
    return launch_digest(runtime_files(root), runtime_versions())
