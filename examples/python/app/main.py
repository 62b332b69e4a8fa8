"""Summarise the text on standard input and sign the summary with a secret.

Runs on CPython 3.12 for wasm32-wasip1 inside a Keep (examples/python):

    stockade run --allow-sim python-example.stockade --stdin notes.txt \\
        --secret signing_key=@key.bin -- --top 3 Alice Bob

Arguments: optional ``--top N`` (how many frequent words, default 5), then
names to greet. Standard input: UTF-8 text. Secret: ``/secrets/signing_key``,
the HMAC-SHA256 key of the summary; the key itself is never printed.
Output: one greeting line per name, then one line of JSON (keys sorted, no
spaces) and one line ``hmac-sha256:<hex>`` over exactly that JSON line.
Exit codes: 0 done, 2 bad arguments, 3 the secret is missing.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import re
import sys

KEY_FILE = "/secrets/signing_key"
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def parse_args(argv: list[str]) -> tuple[int, list[str]]:
    top, names = 5, []
    i = 0
    while i < len(argv):
        if argv[i] == "--top":
            if i + 1 == len(argv) or not argv[i + 1].isdigit():
                raise SystemExit("main.py: --top needs a non-negative integer")
            top = int(argv[i + 1])
            i += 2
        else:
            names.append(argv[i])
            i += 1
    return top, names


def summarise(text: str, top: int) -> dict[str, object]:
    words = [w.casefold() for w in WORD.findall(text)]
    counts = collections.Counter(words)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "lines": len(text.splitlines()),
        "words": len(words),
        "distinct": len(counts),
        "top": [[word, n] for word, n in ranked],
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
    }


def main() -> int:
    try:
        top, names = parse_args(sys.argv[1:])
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        with open(KEY_FILE, "rb") as fh:
            key = fh.read()
    except OSError as exc:
        print(f"main.py: cannot read the secret {KEY_FILE}: {exc.strerror}", file=sys.stderr)
        return 3
    for name in names:
        print(f"Hello, {name}, from CPython {sys.version_info[0]}.{sys.version_info[1]} in a Keep")
    summary = json.dumps(summarise(sys.stdin.read(), top), sort_keys=True, separators=(",", ":"))
    print(summary)
    print("hmac-sha256:" + hmac.new(key, summary.encode(), hashlib.sha256).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
