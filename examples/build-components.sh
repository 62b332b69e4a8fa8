#!/usr/bin/env bash
# Builds the WASI preview 2 component examples (ADR 0020).
#
# Usage: examples/build-components.sh [OUTDIR]
#
#   Without OUTDIR the components are written in place:
#     examples/hello-component/hello.component.wasm
#     examples/hello-component/wordcount.component.wasm
#     examples/jscomponent/jscomponent.wasm
#   With OUTDIR (created if needed): OUTDIR/hello.component.wasm,
#   OUTDIR/wordcount.component.wasm and OUTDIR/jscomponent.wasm.
#
# Toolchain: Node.js (Debian nodejs, npm) and the npm packages pinned in
# examples/jscomponent/package-lock.json, installed with `npm ci
# --ignore-scripts` (none of them has an install script; componentize-js's
# optional AOT mode would download weval from outside the npm registry: it is
# never used here).
#
# hello.component.wasm, wordcount.component.wasm: examples/hello/hello.wasm
# (C) and examples/wordcount/wordcount.wasm (Rust) wrapped into components
# with the WASI preview 1 adapter that jco ships (`jco new --wasi-command`):
# bit for bit reproducible.
#
# jscomponent.wasm: examples/jscomponent/app.js built with componentize-js
# (StarlingMonkey, a SpiderMonkey build for WASI, snapshotted with wizer).
# NOT reproducible: two builds from the same inputs differ in about 2 MB of
# the snapshotted JS heap. The committed artefact is pinned by its SHA-256
# (JSCOMPONENT_SHA256 in tests/test_components.py and docs/languages.md);
# a rebuild gives a component that behaves the same, not the same bytes.

set -euo pipefail

die() {
    printf 'build-components.sh: %s\n' "$*" >&2
    exit 1
}

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
[[ $# -le 1 ]] || die "usage: $0 [OUTDIR]"
outdir="${1:-}"
if [[ -n "$outdir" ]]; then
    mkdir -p -- "$outdir"
    outdir="$(cd -- "$outdir" && pwd -P)"
    hello_out="$outdir/hello.component.wasm"
    wc_out="$outdir/wordcount.component.wasm"
    js_out="$outdir/jscomponent.wasm"
else
    hello_out="$examples_dir/hello-component/hello.component.wasm"
    wc_out="$examples_dir/hello-component/wordcount.component.wasm"
    js_out="$examples_dir/jscomponent/jscomponent.wasm"
fi

export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=1704067200
umask 022
command -v node >/dev/null || die "node not found (Debian package: nodejs)"
command -v npm >/dev/null || die "npm not found (Debian package: npm)"

js_dir="$examples_dir/jscomponent"
if [[ ! -x "$js_dir/node_modules/.bin/componentize-js" ]]; then
    (cd "$js_dir" && npm ci --ignore-scripts --no-audit --no-fund >&2)
fi
bin="$js_dir/node_modules/.bin"

work="$(mktemp -d)"
trap 'rm -rf -- "$work"' EXIT
cp -- "$examples_dir/hello/hello.wasm" "$work/hello.wasm"
(cd "$work" && "$bin/jco" new hello.wasm --wasi-command -o hello.component.wasm >&2)
cp -- "$work/hello.component.wasm" "$hello_out"
cp -- "$examples_dir/wordcount/wordcount.wasm" "$work/wordcount.wasm"
(cd "$work" && "$bin/jco" new wordcount.wasm --wasi-command -o wordcount.component.wasm >&2)
cp -- "$work/wordcount.component.wasm" "$wc_out"

cp -r -- "$js_dir/app.js" "$js_dir/wit" "$work/"
# http and fetch-event off: the component imports no wasi:http, which a Keep
# does not provide.
(cd "$work" && "$bin/componentize-js" -d http fetch-event --wit wit --world-name command \
    -o jscomponent.wasm app.js >&2)
cp -- "$work/jscomponent.wasm" "$js_out"
sha256sum -- "$hello_out" "$wc_out" "$js_out"
