#!/usr/bin/env bash
# Builds the example WebAssembly workloads, bit for bit reproducibly.
#
# Usage: examples/build.sh [OUTDIR]
#
#   Without OUTDIR the modules are written in place, next to their sources:
#     examples/hello/hello.wasm  examples/wordcount/wordcount.wasm
#     examples/csvstat/csvstat.wasm  examples/compute/compute.wasm
#     examples/kv/server/kv-server.wasm  examples/kv/client/kv-client.wasm
#   With OUTDIR (created if needed) they are written as:
#     OUTDIR/hello.wasm          OUTDIR/wordcount.wasm  OUTDIR/csvstat.wasm
#     OUTDIR/compute.wasm        OUTDIR/kv-server.wasm  OUTDIR/kv-client.wasm
#
# Toolchain (Debian bookworm packages): clang lld wasi-libc
# libclang-rt-14-dev-wasm32 libc++-14-dev-wasm32 libc++abi-14-dev-wasm32 rustc
# libstd-rust-dev-wasm32 (bookworm's libc++-dev-wasm32 pulls in the two
# libc++ ones; it has no libc++abi-dev-wasm32 package). The compilers are
# called by absolute path, never found on PATH (a rustup rustc on PATH is a
# different compiler and gives different bytes). Override them only on purpose:
#   STOCKADE_CLANG    (default /usr/bin/clang; C++ is compiled by the same
#                      binary in g++ driver mode, so one version check covers both)
#   STOCKADE_RUSTC    (default /usr/bin/rustc)
#   STOCKADE_RUST_LLD (default /usr/bin/rust-lld, the linker rustc drives)
#
# Reproducibility: sources are copied into a fresh temporary directory and
# compiled there with paths relative to it; every path that could still leak is
# remapped to /stockade/examples; no debug information is produced and symbols
# and custom sections are stripped; the environment the compilers see is
# pinned (LC_ALL, TZ, SOURCE_DATE_EPOCH, no CPATH-like variables). The result
# depends only on the sources and on the exact toolchain versions.

set -euo pipefail

CLANG="${STOCKADE_CLANG:-/usr/bin/clang}"
RUSTC="${STOCKADE_RUSTC:-/usr/bin/rustc}"
RUST_LLD="${STOCKADE_RUST_LLD:-/usr/bin/rust-lld}"

# The versions that produced the committed modules and the hashes in README.md.
EXPECTED_CLANG_VERSION="14.0.6"
EXPECTED_RUSTC_VERSION="1.63.0"

# Where the build directory appears in anything the compilers record.
MAPPED_ROOT="/stockade/examples"

die() {
    printf 'build.sh: %s\n' "$*" >&2
    exit 1
}

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

if [[ $# -gt 1 ]]; then
    die "usage: $0 [OUTDIR]"
fi
outdir="${1:-}"
if [[ -n "$outdir" ]]; then
    mkdir -p -- "$outdir"
    outdir="$(cd -- "$outdir" && pwd -P)"
fi

# --- environment -------------------------------------------------------------
export LC_ALL=C
export TZ=UTC
export SOURCE_DATE_EPOCH=1704067200 # 2024-01-01T00:00:00Z; nothing should read it
umask 022
# Variables that would silently change what clang or the linker see.
unset CPATH C_INCLUDE_PATH CPLUS_INCLUDE_PATH LIBRARY_PATH CCC_OVERRIDE_OPTIONS \
    COMPILER_PATH GCC_EXEC_PREFIX RUSTC_BOOTSTRAP RUSTC_LOG

# --- toolchain checks --------------------------------------------------------
[[ -x "$CLANG" ]] || die "$CLANG not found (Debian packages: clang lld)"
[[ -x "$RUSTC" ]] || die "$RUSTC not found (Debian package: rustc)"
[[ -x "$RUST_LLD" ]] || die "$RUST_LLD not found (Debian packages: rustc lld)"

wasi_libc="$("$CLANG" --target=wasm32-wasi -print-file-name=libc.a)"
[[ -f "$wasi_libc" ]] || die "no wasm32-wasi libc for $CLANG (Debian package: wasi-libc)"
wasi_builtins="$("$CLANG" --target=wasm32-wasi -print-libgcc-file-name)"
[[ -f "$wasi_builtins" ]] ||
    die "no $wasi_builtins (Debian package: libclang-rt-14-dev-wasm32)"
for lib in libc++.a libc++abi.a; do
    wasi_cxx="$("$CLANG" --target=wasm32-wasi -print-file-name="$lib")"
    [[ -f "$wasi_cxx" ]] ||
        die "no wasm32-wasi $lib for $CLANG (Debian packages: libc++-14-dev-wasm32 libc++abi-14-dev-wasm32)"
done
rust_std_dir="$("$RUSTC" --print target-libdir --target wasm32-wasi)"
compgen -G "$rust_std_dir/libstd-*.rlib" >/dev/null ||
    die "no Rust std for wasm32-wasi in $rust_std_dir (Debian package: libstd-rust-dev-wasm32)"

clang_version="$("$CLANG" -dumpversion)"
rustc_version="$("$RUSTC" --version | awk '{print $2}')"
if [[ "$clang_version" != "$EXPECTED_CLANG_VERSION" || "$rustc_version" != "$EXPECTED_RUSTC_VERSION" ]]; then
    printf 'build.sh: warning: clang %s and rustc %s differ from clang %s and rustc %s;\n' \
        "$clang_version" "$rustc_version" "$EXPECTED_CLANG_VERSION" "$EXPECTED_RUSTC_VERSION" >&2
    printf 'build.sh: warning: the modules will not match the committed ones\n' >&2
fi

# --- build in a fresh temporary directory ------------------------------------
tmp="$(mktemp -d "${TMPDIR:-/tmp}/stockade-examples.XXXXXXXX")"
trap 'rm -rf -- "$tmp"' EXIT
mkdir -p "$tmp/src/hello" "$tmp/src/wordcount/src" "$tmp/src/csvstat" "$tmp/src/compute" \
    "$tmp/src/kv/server/src" "$tmp/src/kv/client/src" "$tmp/out"
cp -- "$examples_dir/hello/hello.c" "$tmp/src/hello/hello.c"
cp -- "$examples_dir/compute/compute.c" "$tmp/src/compute/compute.c"
cp -- "$examples_dir/csvstat/csvstat.cpp" "$tmp/src/csvstat/csvstat.cpp"
cp -- "$examples_dir/wordcount/src/main.rs" "$tmp/src/wordcount/src/main.rs"
cp -- "$examples_dir/kv/server/src/main.rs" "$tmp/src/kv/server/src/main.rs"
cp -- "$examples_dir/kv/client/src/main.rs" "$tmp/src/kv/client/src/main.rs"
cd "$tmp/src"

CFLAGS=(
    --target=wasm32-wasi
    -std=c11
    -O2
    -g0
    -Wall
    -Wextra
    "-ffile-prefix-map=$tmp/src=$MAPPED_ROOT"
    "-fdebug-prefix-map=$tmp/src=$MAPPED_ROOT"
    "-ffile-prefix-map=$examples_dir=$MAPPED_ROOT"
    -Wl,--strip-all
)
"$CLANG" "${CFLAGS[@]}" hello/hello.c -o "$tmp/out/hello.wasm"
"$CLANG" "${CFLAGS[@]}" compute/compute.c -o "$tmp/out/compute.wasm"

# C++: Debian's wasm32-wasi libc++ (14) is built without exceptions (WASI had
# no exception handling then), hence -fno-exceptions; no RTTI is needed
# either. --stack-first puts the 64 KiB stack below the static data, so a
# stack overflow traps instead of overwriting data.
CXXFLAGS=(
    --driver-mode=g++
    --target=wasm32-wasi
    -std=c++17
    -O2
    -g0
    -fno-exceptions
    -fno-rtti
    -Wall
    -Wextra
    "-ffile-prefix-map=$tmp/src=$MAPPED_ROOT"
    "-fdebug-prefix-map=$tmp/src=$MAPPED_ROOT"
    "-ffile-prefix-map=$examples_dir=$MAPPED_ROOT"
    -Wl,--stack-first
    -Wl,--strip-all
)
"$CLANG" "${CXXFLAGS[@]}" csvstat/csvstat.cpp -o "$tmp/out/csvstat.wasm"

RUSTC_FLAGS=(
    --edition=2021
    --crate-type=bin
    --target=wasm32-wasi
    -C opt-level=2
    -C codegen-units=1
    -C debuginfo=0
    -C strip=symbols
    -C "linker=$RUST_LLD"
    "--remap-path-prefix=$tmp/src=$MAPPED_ROOT"
    "--remap-path-prefix=$examples_dir=$MAPPED_ROOT"
)
"$RUSTC" "${RUSTC_FLAGS[@]}" --crate-name=wordcount wordcount/src/main.rs -o "$tmp/out/wordcount.wasm"
# The Keep-to-Keep example (examples/kv): a key-value service and its client.
"$RUSTC" "${RUSTC_FLAGS[@]}" --crate-name=kv_server kv/server/src/main.rs -o "$tmp/out/kv-server.wasm"
"$RUSTC" "${RUSTC_FLAGS[@]}" --crate-name=kv_client kv/client/src/main.rs -o "$tmp/out/kv-client.wasm"

# --- install -----------------------------------------------------------------
install_module() { # install_module NAME DESTINATION
    local dest="$2"
    mkdir -p -- "$(dirname -- "$dest")"
    cp -- "$tmp/out/$1" "$dest.tmp.$$"
    chmod 0644 -- "$dest.tmp.$$"
    mv -f -- "$dest.tmp.$$" "$dest"
    printf '%s  %s\n' "$(sha256sum <"$dest" | awk '{print $1}')" "$dest"
}

if [[ -z "$outdir" ]]; then
    install_module hello.wasm "$examples_dir/hello/hello.wasm"
    install_module wordcount.wasm "$examples_dir/wordcount/wordcount.wasm"
    install_module csvstat.wasm "$examples_dir/csvstat/csvstat.wasm"
    install_module compute.wasm "$examples_dir/compute/compute.wasm"
    install_module kv-server.wasm "$examples_dir/kv/server/kv-server.wasm"
    install_module kv-client.wasm "$examples_dir/kv/client/kv-client.wasm"
else
    install_module hello.wasm "$outdir/hello.wasm"
    install_module wordcount.wasm "$outdir/wordcount.wasm"
    install_module csvstat.wasm "$outdir/csvstat.wasm"
    install_module compute.wasm "$outdir/compute.wasm"
    install_module kv-server.wasm "$outdir/kv-server.wasm"
    install_module kv-client.wasm "$outdir/kv-client.wasm"
fi
