"""stockade: run WebAssembly workloads in attested TEE Keeps.

Importing this package has no side effects and imports nothing heavy; the
CLI and the libraries import what they need lazily.
"""

__version__ = "0.1.0"
