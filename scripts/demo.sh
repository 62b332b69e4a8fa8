#!/usr/bin/env bash
# The demo: deploy examples/hello/hello.wasm into a fresh sim Keep.
# The sim backend gives NO hardware protection; it runs the same attestation
# code path as real SEV-SNP hardware, for development and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/stockade run --allow-sim examples/hello/hello.wasm -- Alice
