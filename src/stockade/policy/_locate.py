"""Line numbers of TOML keys, for error messages.

``tomllib`` parses but reports no positions, and a policy error must name the
file, the line and the key. :func:`key_lines` scans the same text (already
accepted by ``tomllib``, so it is valid TOML 1.0) and maps every key path to
the line where it appears: ``("snp", "min_tcb", "microcode")`` for a key in
``[snp]`` or in an inline table, ``("any_of", 1, "snp")`` for the second
``[[any_of]]`` table or the second element of an ``any_of = [...]`` array.

The scanner understands comments, table and array-of-tables headers, dotted
and quoted keys, all four string forms, arrays and inline tables. It is only
used for messages: :func:`line_of` falls back to the nearest enclosing key,
and callers treat a missing line as "line unknown".
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_WS = " \t"


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.lines: dict[Path, int] = {}
        self.aot: dict[Path, int] = {}  # array-of-tables path -> last index

    # -- low level ---------------------------------------------------------

    def line(self) -> int:
        return self.s.count("\n", 0, self.i) + 1

    def peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1

    def skip_comment(self) -> None:
        if self.peek() == "#":
            end = self.s.find("\n", self.i)
            self.i = len(self.s) if end < 0 else end

    def skip_ws_nl_comments(self) -> None:
        while self.i < len(self.s):
            self.skip_ws()
            self.skip_comment()
            if self.peek() in ("\n", "\r"):
                self.i += 1
                continue
            break

    def record(self, path: Path, line: int) -> None:
        self.lines.setdefault(path, line)

    # -- keys --------------------------------------------------------------

    def key_part(self) -> str:
        c = self.peek()
        if c == '"':
            return self.basic_string()
        if c == "'":
            end = self.s.index("'", self.i + 1)
            part = self.s[self.i + 1 : end]
            self.i = end + 1
            return part
        m = _BARE_KEY.match(self.s, self.i)
        if not m:
            raise ValueError(f"no key at offset {self.i}")
        self.i = m.end()
        return m.group(0)

    def dotted_key(self) -> list[str]:
        parts = [self.key_part()]
        while True:
            self.skip_ws()
            if self.peek() != ".":
                return parts
            self.i += 1
            self.skip_ws()
            parts.append(self.key_part())

    def resolve(self, parts: list[str]) -> Path:
        """A header's key path with array-of-tables indices filled in."""
        path: Path = ()
        for part in parts:
            path = (*path, part)
            if path in self.aot:
                path = (*path, self.aot[path])
        return path

    # -- strings and values ---------------------------------------------------

    def basic_string(self) -> str:
        if self.peek(3) == '"""':
            end = self.s.index('"""', self.i + 3)
            while self.s[end + 3 : end + 4] == '"':  # up to two quotes may end the content
                end += 1
            self.i = end + 3
            return ""
        self.i += 1
        out = []
        while self.s[self.i] != '"':
            if self.s[self.i] == "\\":
                out.append(self.s[self.i : self.i + 2])
                self.i += 2
                continue
            out.append(self.s[self.i])
            self.i += 1
        self.i += 1
        return "".join(out)

    def literal_string(self) -> None:
        if self.peek(3) == "'''":
            end = self.s.index("'''", self.i + 3)
            while self.s[end + 3 : end + 4] == "'":
                end += 1
            self.i = end + 3
            return
        self.i = self.s.index("'", self.i + 1) + 1

    def value(self, path: Path) -> None:
        c = self.peek()
        if c == '"':
            self.basic_string()
        elif c == "'":
            self.literal_string()
        elif c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        else:
            self.scalar()

    def scalar(self) -> None:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in ",]}#\r\n" + _WS:
            self.i += 1
        if self.i == start:
            raise ValueError(f"no value at offset {start}")
        # A date-time may use a space instead of "T": 1979-05-27 07:32:00Z
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.s[start : self.i]) and re.match(
            r" \d{2}:", self.s[self.i :]
        ):
            self.i += 1
            self.scalar()

    def array(self, path: Path) -> None:
        self.i += 1
        index = 0
        while True:
            self.skip_ws_nl_comments()
            if self.i >= len(self.s):
                raise ValueError("unterminated array")
            if self.peek() == "]":
                self.i += 1
                return
            self.record((*path, index), self.line())
            self.value((*path, index))
            index += 1
            self.skip_ws_nl_comments()
            if self.peek() == ",":
                self.i += 1

    def inline_table(self, path: Path) -> None:
        self.i += 1
        while True:
            self.skip_ws()
            if self.i >= len(self.s):
                raise ValueError("unterminated inline table")
            if self.peek() == "}":
                self.i += 1
                return
            self.key_value(path)
            self.skip_ws()
            if self.peek() == ",":
                self.i += 1

    def key_value(self, table: Path) -> None:
        line = self.line()
        parts = self.dotted_key()
        path = table
        for part in parts:
            path = (*path, part)
            self.record(path, line)
        self.skip_ws()
        if self.peek() != "=":
            raise ValueError(f"expected '=' at offset {self.i}")
        self.i += 1
        self.skip_ws()
        self.value(path)

    # -- document ------------------------------------------------------------

    def document(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_ws_nl_comments()
            if self.i >= len(self.s):
                return self.lines
            line = self.line()
            if self.peek(2) == "[[":
                self.i += 2
                self.skip_ws()
                parts = self.dotted_key()
                parent = self.resolve(parts[:-1])
                base = (*parent, parts[-1])
                index = self.aot.get(base, -1) + 1
                self.aot[base] = index
                table = (*base, index)
                self.record(base, line)
                self.record(table, line)
                self.i = self.s.index("]]", self.i) + 2
            elif self.peek() == "[":
                self.i += 1
                self.skip_ws()
                table = self.resolve(self.dotted_key())
                for n in range(1, len(table) + 1):
                    self.record(table[:n], line)
                self.i = self.s.index("]", self.i) + 1
            else:
                self.key_value(table)


def key_lines(text: str) -> dict[Path, int]:
    """Map every key path in a valid TOML document to its 1-based line.
    Returns what it found so far if the text surprises the scanner."""
    scanner = _Scanner(text)
    try:
        return scanner.document()
    except (ValueError, IndexError):
        return scanner.lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of its nearest enclosing key that has one."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def dotted(path: Path) -> str:
    """``("any_of", 1, "snp", "products")`` -> ``any_of[1].snp.products``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
            out += ("." if out else "") + text
    return out
