#!/usr/bin/env bash
# Keep-to-Keep with the steward, end to end, on this machine (README:
# "Keep-to-Keep with the steward"; issue 17).
#
#   1. a SoftHSM2 token in a temporary directory (SOFTHSM2_CONF points there);
#   2. `stockade steward init` with the CA key generated in that token;
#   3. two signing keys and three signed packages: kv-server and kv-client
#      (examples/kv, each naming the other's signer as its peer) signed by
#      the author key, and kv-intruder (the same client, another package)
#      signed by another key;
#   4. `stockade steward serve` on loopback (its PIN from a file), with the
#      development policy (sim allowed) and both signer keys;
#   5. the server Keep (`stockade run --allow-sim --steward ... --listen
#      kv=127.0.0.1:0`), which gets its certificate from the steward and
#      reports the address it listens on;
#   6. the intruder Keep, which gets a certificate too but is refused by the
#      server's runtime (its package is not signed by the expected key);
#   7. `stockade connect` as a person: expecting another workload it refuses
#      the server (110); expecting the server it verifies the server's
#      workload, and the server's runtime refuses it (no client certificate);
#      then the client Keep, which talks to the server over mutual TLS: each
#      side sees the other's workload identity;
#   8. `stockade log verify --steward` (every entry against the signed tree
#      head) and, for every certificate the steward issued, its inclusion
#      proof checked offline with `stockade log verify --proof`;
#   9. teardown: every process it started is stopped, the directory removed.
#
# sim Keeps: NO HARDWARE PROTECTION (simulated AMD PSP, development only).
#
# Usage: scripts/demo-keep2keep.sh [--keep-dir]
#   --keep-dir  leave the temporary directory in place (its path is printed).
# Environment: STOCKADE (default .venv/bin/stockade), PYTHON (default
# .venv/bin/python), both made by scripts/bootstrap.sh.
# Exit status: 0 when every step did what is expected, 1 otherwise (the
# failing step is named).

set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) stops the script too

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
STOCKADE="${STOCKADE:-$repo/.venv/bin/stockade}"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
keep_dir=0
for arg in "$@"; do
    case "$arg" in
    --keep-dir) keep_dir=1 ;;
    *)
        echo "usage: $0 [--keep-dir]" >&2
        exit 2
        ;;
    esac
done

say() { printf '\n== %s\n' "$*"; }
die() {
    printf 'demo-keep2keep: FAILED: %s\n' "$*" >&2
    exit 1
}

[[ -x "$STOCKADE" ]] || die "$STOCKADE not found: run scripts/bootstrap.sh first"
[[ -x "$PYTHON" ]] || die "$PYTHON not found: run scripts/bootstrap.sh first"
command -v softhsm2-util >/dev/null || die "softhsm2-util not found (Debian package softhsm2)"
module=""
for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
    if [[ -f "$candidate" ]]; then
        module="$candidate"
        break
    fi
done
[[ -n "$module" ]] || die "libsofthsm2.so not found (Debian package softhsm2)"

work="$(mktemp -d "${TMPDIR:-/tmp}/stockade-keep2keep.XXXXXXXX")"
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 && -d "$work" ]]; then
        for f in "$work"/*.err "$work"/steward.log; do
            [[ -f "$f" ]] || continue
            printf -- '--- %s (last lines)\n' "${f#"$work"/}" >&2
            tail -n 15 "$f" >&2
        done
    fi
    if [[ $keep_dir -eq 1 ]]; then
        echo "demo-keep2keep: files left in $work" >&2
    else
        rm -rf -- "$work"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Everything this demo makes stays under $work: the sim chip and compile
# cache of the Keeps, the token, the steward, the keys and packages.
export STOCKADE_STATE_DIR="$work/state"
export XDG_CACHE_HOME="$work/cache"
export SOFTHSM2_CONF="$work/softhsm2.conf"
# Fresh Keep processes: the per-user warm fork server would outlive the demo
# (it exits after a minute idle) and is shared with other runs of this user.
export STOCKADE_WARM=0
unset STOCKADE_PKCS11_PIN
mkdir -p "$work/tokens" "$STOCKADE_STATE_DIR"
chmod 0700 "$work"

# Waits until FILE has a line matching the extended regex RE (prints the
# first such line) while process PID lives, for at most SECONDS.
wait_for_line() { # wait_for_line FILE RE PID SECONDS
    local file="$1" re="$2" pid="$3" deadline=$((SECONDS + $4))
    while ((SECONDS < deadline)); do
        if [[ -f "$file" ]] && grep -E -m1 -- "$re" "$file"; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# --- 1. the token -------------------------------------------------------------
say "SoftHSM2 token (in $work/tokens)"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" >"$SOFTHSM2_CONF"
pin="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
(umask 077 && printf '%s\n' "$pin" >"$work/pin")
# softhsm2-util takes the PINs of a new token only on its command line (or
# from a terminal): acceptable for this throwaway token, not for a real one
# (docs/steward.md, HSM guide). stockade itself reads the PIN from the file.
softhsm2-util --init-token --free --label stockade-steward --so-pin "so-$pin" --pin "$pin" >/dev/null

# --- 2. the CA, its key in the token -------------------------------------------
say "stockade steward init (CA key generated in the token)"
"$STOCKADE" steward init --state-dir "$work/steward" --pkcs11-module "$module" \
    --token-label stockade-steward --pin-file "$work/pin"
ca="$work/steward/ca.pem"

# --- 3. keys and packages -------------------------------------------------------
say "signing keys and signed packages"
"$STOCKADE" key generate --out "$work/author.key" >"$work/author.txt"
"$STOCKADE" key generate --out "$work/intruder.key" >"$work/intruder.txt"
author_kid="$(awk '$1 == "kid" {print $2}' "$work/author.txt")"
intruder_kid="$(awk '$1 == "kid" {print $2}' "$work/intruder.txt")"
[[ "$author_kid" =~ ^[0-9a-f]{64}$ && "$intruder_kid" =~ ^[0-9a-f]{64}$ ]] || die "no kid from stockade key generate"
author_raw="$(awk '$1 == "raw" && $2 == "key" {print $3}' "$work/author.txt")"
intruder_raw="$(awk '$1 == "raw" && $2 == "key" {print $3}' "$work/intruder.txt")"
[[ "$author_raw" =~ ^[0-9a-f]{64}$ && "$intruder_raw" =~ ^[0-9a-f]{64}$ ]] || die "no raw key from stockade key generate"
echo "author kid   $author_kid"
echo "intruder kid $intruder_kid"

placeholder="0000000000000000000000000000000000000000000000000000000000000000"
make_package() { # make_package SRC NAME KEY -> prints the digest
    local src="$1" name="$2" key="$3" dir="$work/src/$2"
    mkdir -p "$dir"
    cp -- "$repo/examples/kv/$src/Stockade.toml" "$repo/examples/kv/$src/kv-$src.wasm" "$dir/"
    # The committed manifests name a placeholder signer: name the author.
    sed -i -e "s/$placeholder/$author_kid/" -e "s/^name = \"kv-$src\"$/name = \"$name\"/" "$dir/Stockade.toml"
    grep -q "$author_kid" "$dir/Stockade.toml" || die "$name: no peer kid in its manifest"
    "$STOCKADE" package build "$dir" -o "$work/$name.stockade" >/dev/null || die "$name: package build failed"
    "$STOCKADE" package sign "$work/$name.stockade" --key "$key" --json >"$work/$name.sign.json" ||
        die "$name: package sign failed"
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["digest"])' "$work/$name.sign.json"
}
server_digest="$(make_package server kv-server "$work/author.key")"
client_digest="$(make_package client kv-client "$work/author.key")"
intruder_digest="$(make_package client kv-intruder "$work/intruder.key")"
echo "kv-server.stockade    sha256:$server_digest (signed by the author)"
echo "kv-client.stockade    sha256:$client_digest (signed by the author)"
echo "kv-intruder.stockade  sha256:$intruder_digest (signed by the intruder key)"

# --- 4. the steward service -----------------------------------------------------
say "stockade steward serve (loopback; a development policy: sim allowed)"
"$STOCKADE" host sim-root --state-dir "$STOCKADE_STATE_DIR" >"$work/sim-root.pem" 2>/dev/null
# The steward's policy: the built-in development one (sim allowed, NO
# HARDWARE PROTECTION; the Keep measurement of this installation) and the
# signer keys it vouches for. A certificate names only signers that the
# steward's policy lists ([workload] signers) and the Keep verified, so
# both keys are listed: the steward certifies who signed each package, and
# the server's manifest decides which signers it accepts as peers.
{
    "$STOCKADE" policy default --allow-sim | sed -e 's/^name = .*/name = "keep-to-keep demo (development: sim allowed)"/'
    printf '\n[workload]\nsigners = ["%s", "%s"]\n' "$author_raw" "$intruder_raw"
} >"$work/steward-policy.toml"
steward_port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
steward_url="https://127.0.0.1:$steward_port"
"$STOCKADE" steward serve --state-dir "$work/steward" --listen "127.0.0.1:$steward_port" \
    --policy "$work/steward-policy.toml" --sim-root "$work/sim-root.pem" --pin-file "$work/pin" >"$work/steward.log" 2>&1 &
steward_pid=$!
pids+=("$steward_pid")
# Ready when its API answers over TLS under the pinned CA.
"$PYTHON" - "$steward_url" "$ca" "$steward_pid" <<'EOF' || die "the steward did not come up (steward.log)"
import os, ssl, sys, time, urllib.request
url, ca, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(url + "/v1/ca", context=ctx, timeout=5) as answer:
            if answer.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(0.3)
sys.exit(1)
EOF
echo "steward at $steward_url (CA $ca)"

steward_args=(--allow-sim --steward "$steward_url" --steward-ca "$ca")

# --- 5. the server Keep ----------------------------------------------------------
say "server Keep: kv-server, listening on kv=127.0.0.1:0"
"$STOCKADE" run "${steward_args[@]}" --signer "$work/author.key.pub" --listen kv=127.0.0.1:0 \
    "$work/kv-server.stockade" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
pids+=("$server_pid")
line="$(wait_for_line "$work/server.err" 'listening.*[0-9.]+:[0-9]+' "$server_pid" 120)" ||
    die "the server Keep did not report a listening address (server.err)"
address="$(grep -E -o '127\.0\.0\.1:[0-9]+' <<<"$line" | head -n1)"
[[ -n "$address" ]] || die "no 127.0.0.1:PORT in the server Keep's line: $line"
cat "$work/server.err"
echo "server Keep listens on $address"

# --- 6. the intruder Keep: refused -------------------------------------------------
say "intruder Keep: kv-intruder (another package, another signer), refused by the server"
set +e
"$STOCKADE" run "${steward_args[@]}" --signer "$work/intruder.key.pub" --connect "kv=$address" \
    "$work/kv-intruder.stockade" -- "GET colour" >"$work/intruder.out" 2>"$work/intruder.err"
intruder_status=$?
set -e
cat "$work/intruder.err"
[[ $intruder_status -ne 0 ]] || die "the intruder Keep was not refused (exit 0)"
[[ ! -s "$work/intruder.out" ]] || die "the intruder got answers: $(cat "$work/intruder.out")"
wait_for_line "$work/server.err" 'refused' "$server_pid" 30 >/dev/null ||
    die "the server Keep reported no refused connection"
echo "intruder Keep refused (exit $intruder_status); the server reported:"
grep -E 'refused' "$work/server.err"

# --- 6b. a person with stockade connect ---------------------------------------------
say "stockade connect: the server's identity checked, then refused without a workload certificate"
set +e
printf 'GET colour\nQUIT\n' | "$STOCKADE" connect "$address" --steward-ca "$ca" \
    --expect-digest "$client_digest" >"$work/connect-wrong.out" 2>"$work/connect-wrong.err"
wrong_status=$?
printf 'GET colour\nQUIT\n' | "$STOCKADE" connect "$address" --steward-ca "$ca" \
    --expect-digest "$server_digest" >"$work/connect.out" 2>"$work/connect.err"
connect_status=$?
set -e
cat "$work/connect-wrong.err" "$work/connect.err"
# Expecting another workload: refused on our side (110), nothing sent.
[[ $wrong_status -eq 110 && ! -s "$work/connect-wrong.out" ]] ||
    die "stockade connect expecting another workload: exit $wrong_status, 110 expected"
# Expecting the server: its identity verified, then the server's runtime
# refuses a client without a workload certificate (a TLS alert: 113).
grep -q "verified workload stockade://workload/sha256/$server_digest" "$work/connect.err" ||
    die "stockade connect did not verify the server's workload"
[[ $connect_status -eq 113 && ! -s "$work/connect.out" ]] ||
    die "stockade connect without a client certificate: exit $connect_status, 113 expected"

# --- 7. the client Keep -------------------------------------------------------------
say "client Keep: kv-client over mutual TLS to $address"
"$STOCKADE" run "${steward_args[@]}" --signer "$work/author.key.pub" --connect "kv=$address" \
    "$work/kv-client.stockade" -- "SET colour blue" "GET colour" "GET size" "COUNT" \
    >"$work/client.out" 2>"$work/client.err" || die "the client Keep failed"
cat "$work/client.err"
cat "$work/client.out"
expected="$(printf '> SET colour blue\nOK\n> GET colour\nVALUE blue\n> GET size\nMISSING\n> COUNT\nCOUNT 1')"
[[ "$(cat "$work/client.out")" == "$expected" ]] || die "unexpected answers from the server"
grep -q "stockade://workload/sha256/$server_digest" "$work/client.err" ||
    die "the client Keep did not report the server's workload identity"
set +e
wait "$server_pid"
server_status=$?
set -e
cat "$work/server.err"
[[ $server_status -eq 0 ]] || die "the server Keep exited $server_status"
grep -q "stockade://workload/sha256/$client_digest" "$work/server.err" ||
    die "the server Keep did not report the client's workload identity"
grep -q "kv-server: connection 1: 5 command(s), QUIT, 1 entries" "$work/server.err" ||
    die "kv-server did not log the client's connection"

# --- 8. the log ---------------------------------------------------------------------------
say "stockade log verify --steward: every entry against the signed tree head"
"$STOCKADE" log verify --steward "$steward_url" --steward-ca "$ca" --save-tree-head "$work/head.cbor"
kill -TERM "$steward_pid"
wait "$steward_pid" || true
say "every certificate's inclusion proof, checked offline with the log's key"
log_dir="$work/steward/log"
log_key="$work/log-key.pem"
"$PYTHON" - "$ca" "$work/steward/log-cert.pem" "$log_key" <<'EOF' || die "no log key certified by the CA"
# The log key, from the log certificate the CA issued, checked under the
# pinned CA (stockade.steward.logkey), as `log verify --steward` gets it.
import datetime as dt, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from stockade.steward.logkey import log_key_from_certificate

ca = x509.load_pem_x509_certificate(Path(sys.argv[1]).read_bytes())
cert = x509.load_pem_x509_certificate(Path(sys.argv[2]).read_bytes())
key = log_key_from_certificate(cert.public_bytes(serialization.Encoding.DER), ca, dt.datetime.now(dt.UTC))
pem = serialization.load_der_public_key(key.spki).public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
Path(sys.argv[3]).write_bytes(pem)
EOF
size="$("$STOCKADE" log head --state-dir "$log_dir" --out "$work/head-final.cbor" |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["size"])')"
issued=0
for ((index = 0; index < size; index++)); do
    entry="$("$STOCKADE" log get --state-dir "$log_dir" "$index" --out "$work/entry-$index.cbor")"
    kind="$("$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1]).get("kind", "?"))' "$entry")"
    "$STOCKADE" log prove --state-dir "$log_dir" "$index" --out "$work/proof-$index.cbor" >/dev/null
    printf 'entry %d (%s): ' "$index" "$kind"
    "$STOCKADE" log verify --proof "$work/proof-$index.cbor" --tree-head "$work/head-final.cbor" \
        --key "$log_key" "$work/entry-$index.cbor"
    if [[ "$kind" == "certificate" ]]; then
        issued=$((issued + 1))
    fi
done
# The server, the intruder and the client Keep each got a certificate.
((issued >= 3)) || die "the log holds $issued certificate entries, 3 expected"

say "done: 3 Keeps certified by the steward (CA key in SoftHSM2), the intruder refused, $size log entries verified"
