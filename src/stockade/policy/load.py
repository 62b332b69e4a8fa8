"""Policy files: TOML in, a compiled :class:`~stockade.policy.types.Policy` out.

The format is specified key by key in docs/policy.md. Loading is strict:
an unknown key, a value of the wrong type, hex of the wrong length, an
empty allow list or rules for a platform that ``platforms`` does not allow
each raise :class:`~stockade.policy.model.PolicyError` (a UsageError, exit
code 2) naming the file, the line and the key, e.g.::

    deploy.toml:7: snp.min_tcb.ucode: unknown key; did you mean 'microcode'?
    (allowed here: bootloader, tee, snp, microcode, fmc)

Compilation keeps the file's order; the rules every policy has come first:
``platforms`` (required), ``allow_debug`` (default false: debugging is
refused) and ``allow_migration_agent`` (default false: an SEV-SNP guest
policy that allows a migration agent is refused).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable
from datetime import date, datetime, time
from os import PathLike
from pathlib import Path as FsPath
from typing import Any, NoReturn

from stockade.policy._locate import Path, dotted, key_lines, line_of
from stockade.policy.model import PolicyError
from stockade.policy.rules import (
    FLAG_TABLES,
    UNRECOGNIZED_INSTANCE,
    UNSAFE_CONFIG,
    AdvisoriesDenied,
    AllOf,
    AnyOf,
    BytesIn,
    Debug,
    FmspcIn,
    GuestPolicyFlag,
    MaxAge,
    MaxCollateralAge,
    MigrationAgent,
    MinFirmware,
    MinTcb,
    Not,
    OnPlatform,
    PlatformIn,
    ProductIn,
    RegisterIn,
    RootIn,
    Rule,
    SignerIn,
    TcbStatusIn,
    VmplIn,
    parse_version,
)
from stockade.policy.types import PLATFORMS, Policy, WorkloadRequirements

VERSION = 1
SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
SNP_SIGNERS = ("VCEK", "VLEK")
SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
INTEL_TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
TDX_REGISTERS = (
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mrseam",
    "mrsignerseam",
    "mrconfigid",
    "mrowner",
    "mrownerconfig",
)
SGX_REGISTERS = ("mrenclave", "mrsigner")
REGISTER_SIZES = {**dict.fromkeys(TDX_REGISTERS, 48), **dict.fromkeys(SGX_REGISTERS, 32)}

_COMBINATORS = ("all_of", "any_of", "not")
_TOP_ONLY = ("version", "name", "description", "allow_debug", "allow_migration_agent", "workload")
_WORKLOAD_KEYS = ("signers", "min_signatures", "digests", "require_log", "log_keys")
_GENERIC = ("platforms", "measurements", "max_age", "max_collateral_age", *PLATFORMS, *_COMBINATORS)
_SNP_KEYS = (
    "products",
    "deny_products",
    "signers",
    "min_tcb",
    "min_firmware",
    "measurements",
    "host_data",
    "chip_ids",
    "vmpl",
    "guest_policy",
    *_COMBINATORS,
)
_INTEL_KEYS = (
    "products",
    "deny_products",
    "fmspc",
    "deny_fmspc",
    "tcb_status",
    "deny_advisories",
    "measurements",
)
ALLOWED_KEYS: dict[str, tuple[str, ...]] = {
    "top": (*_TOP_ONLY, *_GENERIC),
    "generic": _GENERIC,
    "snp": _SNP_KEYS,
    "sim": (*_SNP_KEYS[:-3], "root_sha256", *_COMBINATORS),
    "tdx": (*_INTEL_KEYS, *TDX_REGISTERS, "td_attributes", *_COMBINATORS),
    "sgx": (*_INTEL_KEYS, *SGX_REGISTERS, "attributes", *_COMBINATORS),
}
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _close(word: str, choices: Any, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """difflib's suggestions, imported only on the error path."""
    import difflib

    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime | date | time):
        return "date/time"
    return type(value).__name__


class _Loader:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self._lines: dict[Path, int] | None = None
        self.platforms: tuple[str, ...] = ()

    # -- errors ----------------------------------------------------------------

    def fail(self, path: Path, problem: str) -> NoReturn:
        if self._lines is None:
            self._lines = key_lines(self.text)
        raise PolicyError(self.source, line_of(self._lines, path), dotted(path), problem)

    def wrong_type(self, path: Path, want: str, value: object) -> NoReturn:
        self.fail(path, f"expected {want}, got {_type_name(value)} {value!r}")

    # -- typed values ----------------------------------------------------------

    def table(self, value: object, path: Path) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.wrong_type(path, "a table", value)
        if not value:
            self.fail(path, "empty table: give at least one key, or remove it")
        return value

    def array(self, value: object, path: Path, what: str) -> list[Any]:
        if not isinstance(value, list):
            self.wrong_type(path, f"an array of {what}", value)
        if not value:
            self.fail(
                path,
                "empty allow list: it would refuse everything; name the allowed values, "
                "or remove the key to allow any value",
            )
        return value

    def strings(self, value: object, path: Path, choices: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A non-empty array of strings; with ``choices``, each one of them
        (matched case-insensitively, returned in canonical spelling)."""
        out: list[str] = []
        for i, item in enumerate(self.array(value, path, "strings")):
            if not isinstance(item, str):
                self.wrong_type((*path, i), "a string", item)
            text = item
            if choices:
                canonical = {c.lower(): c for c in choices}.get(item.lower())
                if canonical is None:
                    near = _close(item, choices, n=1)
                    hint = f"; did you mean {near[0]!r}?" if near else ""
                    self.fail((*path, i), f"unknown value {item!r}{hint} (known: {', '.join(choices)})")
                text = canonical
            if text not in out:
                out.append(text)
        return tuple(out)

    def hexes(self, value: object, path: Path, sizes: tuple[int, ...]) -> tuple[bytes, ...]:
        out: list[bytes] = []
        want = " or ".join(f"{n} bytes ({2 * n} hex digits)" for n in sizes)
        for i, item in enumerate(self.array(value, path, "hex strings")):
            if not isinstance(item, str):
                self.wrong_type((*path, i), "a hex string", item)
            text = item.removeprefix("0x")
            if not re.fullmatch(r"[0-9a-fA-F]*", text) or len(text) % 2:
                self.fail((*path, i), f"not hex: {item!r} (expected {want})")
            blob = bytes.fromhex(text)
            if len(blob) not in sizes:
                got = "1 byte" if len(blob) == 1 else f"{len(blob)} bytes"
                self.fail((*path, i), f"expected {want}, got {got} ({len(text)} hex digits)")
            if blob not in out:
                out.append(blob)
        return tuple(out)

    def integer(self, value: object, path: Path, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(path, f"an integer from {low} to {high}", value)
        if not low <= value <= high:
            self.fail(path, f"{value} is out of range (expected {low} to {high})")
        return value

    def boolean(self, value: object, path: Path) -> bool:
        if not isinstance(value, bool):
            self.wrong_type(path, "true or false", value)
        return value

    def duration(self, value: object, path: Path) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            seconds = value
        elif isinstance(value, str):
            compact = value.replace(" ", "")
            if not re.fullmatch(r"(\d+[smhd])+", compact):
                self.fail(
                    path, f'not a duration: {value!r} (examples: 3600, "90s", "15m", "24h", "7d", "1h30m")'
                )
            seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(compact))
        else:
            self.wrong_type(path, 'seconds (an integer) or a duration string such as "24h"', value)
        if seconds <= 0:
            self.fail(path, "must be positive")
        return seconds

    # -- rule tables -----------------------------------------------------------

    def check_keys(self, table: dict[str, Any], path: Path, kind: str) -> None:
        allowed = ALLOWED_KEYS[kind]
        for key in table:
            if key in allowed:
                continue
            near = _close(key, allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            if kind in PLATFORMS and key in ALLOWED_KEYS["generic"]:
                hint = f"; {key!r} belongs outside the [{kind}] table"
            where = {"top": "at the top level", "generic": "here"}.get(kind, f"in a [{kind}] table")
            self.fail((*path, key), f"unknown key{hint} (allowed {where}: {', '.join(allowed)})")

    def tables(self, value: object, path: Path) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            self.wrong_type(path, "an array of tables", value)
        if not value:
            self.fail(path, "empty list of alternatives")
        return value

    def compile(self, table: dict[str, Any], path: Path, kind: str) -> tuple[Rule, ...]:
        """The rules of one table, in file order. ``kind`` is "top",
        "generic" (a table under a combinator outside platform tables) or a
        platform name."""
        self.check_keys(table, path, kind)
        rules: list[Rule] = []
        for key, value in table.items():
            where: Path = (*path, key)
            label = dotted(where)
            if key in _TOP_ONLY or (kind == "top" and key == "platforms"):
                continue  # handled by load()
            handler = _HANDLERS.get((kind if kind in PLATFORMS else "generic", key))
            if handler is not None:
                rules.extend(handler(self, value, where, label))
            elif key in _COMBINATORS:
                sub = kind if kind in PLATFORMS else "generic"
                rules.append(self.combinator(key, value, where, label, sub))
            else:  # pragma: no cover - check_keys and _HANDLERS agree
                self.fail(where, "unhandled key")
        return tuple(rules)

    def combinator(self, key: str, value: object, path: Path, label: str, kind: str) -> Rule:
        if key == "not":
            return Not(label, self.compile(self.table(value, path), path, kind))
        alternatives = tuple(
            AllOf(dotted((*path, i)), self.compile(self.table(t, (*path, i)), (*path, i), kind))
            for i, t in enumerate(self.tables(value, path))
        )
        return AnyOf(label, alternatives) if key == "any_of" else AllOf(label, alternatives)

    def section(self, platform: str, value: object, path: Path, label: str) -> list[Rule]:
        table = self.table(value, path)
        if platform not in self.platforms:
            self.fail(
                path,
                f"rules for {platform}, which `platforms` does not allow "
                f"(add {platform!r} to platforms, or remove this table)",
            )
        return [OnPlatform(label, platform, self.compile(table, path, platform))]

    def load(self) -> Policy:
        try:
            doc = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
            line = int(m.group(1)) if m else None
            if line is None and "end of document" in str(exc):
                line = self.text.count("\n") + (0 if self.text.endswith("\n") else 1)
            raise PolicyError(self.source, line, "", f"not valid TOML: {exc}") from None
        self.check_keys(doc, (), "top")
        if "version" not in doc:
            raise PolicyError(
                self.source, None, "version", f"required key missing (write version = {VERSION})"
            )
        version = doc["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            self.wrong_type(("version",), "an integer", version)
        if version != VERSION:
            self.fail(
                ("version",),
                f"unsupported policy version {version} (this stockade reads version = {VERSION})",
            )
        if "platforms" not in doc:
            raise PolicyError(
                self.source,
                None,
                "platforms",
                'required key missing (e.g. platforms = ["snp"]; add "sim" only for development)',
            )
        self.platforms = self.strings(doc["platforms"], ("platforms",), PLATFORMS)
        name = doc.get("name", FsPath(self.source).stem or "policy")
        if not isinstance(name, str) or not name:
            self.wrong_type(("name",), "a non-empty string", name)
        if "description" in doc and not isinstance(doc["description"], str):
            self.wrong_type(("description",), "a string", doc["description"])
        allow_debug = self.boolean(doc["allow_debug"], ("allow_debug",)) if "allow_debug" in doc else False
        allow_ma = (
            self.boolean(doc["allow_migration_agent"], ("allow_migration_agent",))
            if "allow_migration_agent" in doc
            else False
        )
        rules: tuple[Rule, ...] = (
            PlatformIn("platforms", self.platforms),
            Debug("allow_debug", allowed=allow_debug),
            MigrationAgent("allow_migration_agent", allowed=allow_ma),
            *self.compile(doc, (), "top"),
        )
        return Policy(
            name=name,
            rules=rules,
            platforms=self.platforms,
            allow_debug=allow_debug,
            allow_migration_agent=allow_ma,
            source=self.source,
            digest=hashlib.sha256(self.text.encode()).hexdigest(),
            workload=self.workload(doc["workload"]) if "workload" in doc else None,
        )

    def workload(self, value: object) -> WorkloadRequirements:
        path: Path = ("workload",)
        table = self.table(value, path)
        for key in table:
            if key not in _WORKLOAD_KEYS:
                near = _close(key, _WORKLOAD_KEYS)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                self.fail((*path, key), f"unknown key{hint} (allowed here: {', '.join(_WORKLOAD_KEYS)})")
        if not table:
            self.fail(path, "empty table: name signers, digests or both")
        signers = self.hexes(table["signers"], (*path, "signers"), (32,)) if "signers" in table else ()
        digests = self.hexes(table["digests"], (*path, "digests"), (32,)) if "digests" in table else ()
        if "min_signatures" in table:
            if not signers:
                self.fail((*path, "min_signatures"), "min_signatures without signers")
            minimum = self.integer(table["min_signatures"], (*path, "min_signatures"), 1, len(signers))
        else:
            minimum = 1 if signers else 0
        require_log = (
            self.boolean(table["require_log"], (*path, "require_log")) if "require_log" in table else False
        )
        log_keys = self.hexes(table["log_keys"], (*path, "log_keys"), (32,)) if "log_keys" in table else ()
        if require_log and not signers:
            self.fail((*path, "require_log"), "require_log without signers (it applies to their signatures)")
        if require_log and not log_keys:
            self.fail(
                (*path, "require_log"),
                "require_log needs log_keys: the log ID(s) (SHA-256 of the log key's SubjectPublicKeyInfo) "
                "whose signed tree heads you trust",
            )
        if log_keys and not require_log:
            self.fail((*path, "log_keys"), "log_keys without require_log = true")
        return WorkloadRequirements(
            signers=signers,
            min_signatures=minimum,
            digests=digests,
            require_log=require_log,
            log_keys=log_keys,
        )


# --- key handlers: (table kind, key) -> rules -------------------------------------------

_Handler = Callable[[_Loader, Any, Path, str], list[Rule]]


def _platforms(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    return [PlatformIn(label, ld.strings(v, p, PLATFORMS))]


def _measurements(sizes: tuple[int, ...]) -> _Handler:
    return lambda ld, v, p, label: [BytesIn(label, "measurement", ld.hexes(v, p, sizes))]


def _max_age(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    return [MaxAge(label, ld.duration(v, p))]


def _max_collateral_age(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    return [MaxCollateralAge(label, ld.duration(v, p))]


def _section(platform: str) -> _Handler:
    return lambda ld, v, p, label: ld.section(platform, v, p, label)


def _products(choices: tuple[str, ...], deny: bool) -> _Handler:
    return lambda ld, v, p, label: [ProductIn(label, ld.strings(v, p, choices), deny)]


def _signers(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    return [SignerIn(label, ld.strings(v, p, SNP_SIGNERS))]


def _min_tcb(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    table = ld.table(v, p)
    out: list[Rule] = []
    for component, minimum in table.items():
        where = (*p, component)
        if component not in SNP_TCB_COMPONENTS:
            near = _close(component, SNP_TCB_COMPONENTS, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            ld.fail(where, f"unknown key{hint} (allowed here: {', '.join(SNP_TCB_COMPONENTS)})")
        out.append(MinTcb(dotted(where), component, ld.integer(minimum, where, 0, 255)))
    return out


def _min_firmware(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    if not isinstance(v, str):
        ld.wrong_type(p, 'a version string such as "1.55" or "1.55.29"', v)
    version = parse_version(v)
    if version is None:
        ld.fail(p, f'not a version: {v!r} (expected a string such as "1.55" or "1.55.29")')
    return [MinFirmware(label, version)]


def _host_data(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    return [BytesIn(label, "host_data", ld.hexes(v, p, (32,)), "configuration", UNSAFE_CONFIG)]


def _chip_ids(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    return [BytesIn(label, "chip_id", ld.hexes(v, p, (64,)), "instance-identity", UNRECOGNIZED_INSTANCE)]


def _root_sha256(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    """``[sim] root_sha256``: one hex string or an array of them."""
    return [RootIn(label, ld.hexes([v] if isinstance(v, str) else v, p, (32,)))]


def _vmpl(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    items = ld.array(v, p, "integers")
    vmpls: list[int] = []
    for i, item in enumerate(items):
        n = ld.integer(item, (*p, i), 0, 3)
        if n not in vmpls:
            vmpls.append(n)
    return [VmplIn(label, tuple(vmpls))]


def _flags(table: str) -> _Handler:
    """SNP guest_policy, TDX td_attributes, SGX attributes: flag -> bool."""
    bits = FLAG_TABLES[table][1]

    def handler(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
        out: list[Rule] = []
        for flag, required in ld.table(v, p).items():
            where = (*p, flag)
            if flag not in bits:
                near = _close(flag, list(bits), n=1, cutoff=0.5)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                ld.fail(where, f"unknown key{hint} (allowed here: {', '.join(bits)})")
            out.append(GuestPolicyFlag(dotted(where), flag, ld.boolean(required, where), table))
        return out

    return handler


def _fmspc(deny: bool) -> _Handler:
    def handler(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
        values = tuple(b.hex() for b in ld.hexes(v, p, (6,)))
        return [FmspcIn(label, values, deny)]

    return handler


def _tcb_status(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    return [TcbStatusIn(label, ld.strings(v, p, INTEL_TCB_STATUSES))]


def _advisories(ld: _Loader, v: Any, p: Path, label: str) -> list[Rule]:
    ids = ld.strings(v, p)
    for i, item in enumerate(ids):
        if not re.fullmatch(r"INTEL-SA-\d{5}", item.upper()):
            ld.fail((*p, i), f'not an Intel advisory ID: {item!r} (expected e.g. "INTEL-SA-00960")')
    return [AdvisoriesDenied(label, tuple(dict.fromkeys(i.upper() for i in ids)))]


def _register(name: str) -> _Handler:
    return lambda ld, v, p, label: [RegisterIn(label, name, ld.hexes(v, p, (REGISTER_SIZES[name],)))]


def _free_products(deny: bool) -> _Handler:
    return lambda ld, v, p, label: [ProductIn(label, ld.strings(v, p), deny)]


_HANDLERS: dict[tuple[str, str], _Handler] = {
    ("generic", "platforms"): _platforms,
    ("generic", "measurements"): _measurements((32, 48)),
    ("generic", "max_age"): _max_age,
    ("generic", "max_collateral_age"): _max_collateral_age,
    **{("generic", plat): _section(plat) for plat in PLATFORMS},
}
for _kind in ("snp", "sim"):
    _HANDLERS.update(
        {
            (_kind, "products"): _products(SNP_PRODUCTS, False),
            (_kind, "deny_products"): _products(SNP_PRODUCTS, True),
            (_kind, "signers"): _signers,
            (_kind, "min_tcb"): _min_tcb,
            (_kind, "min_firmware"): _min_firmware,
            (_kind, "measurements"): _measurements((48,)),
            (_kind, "host_data"): _host_data,
            (_kind, "chip_ids"): _chip_ids,
            (_kind, "vmpl"): _vmpl,
            (_kind, "guest_policy"): _flags("snp"),
        }
    )
_HANDLERS[("sim", "root_sha256")] = _root_sha256
for _kind, _size, _registers in (("tdx", 48, TDX_REGISTERS), ("sgx", 32, SGX_REGISTERS)):
    _HANDLERS.update(
        {
            (_kind, "products"): _free_products(False),
            (_kind, "deny_products"): _free_products(True),
            (_kind, "fmspc"): _fmspc(False),
            (_kind, "deny_fmspc"): _fmspc(True),
            (_kind, "tcb_status"): _tcb_status,
            (_kind, "deny_advisories"): _advisories,
            (_kind, "measurements"): _measurements((_size,)),
            **{(_kind, reg): _register(reg) for reg in _registers},
            (_kind, "td_attributes" if _kind == "tdx" else "attributes"): _flags(_kind),
        }
    )


def loads_policy(text: str, source: str = "<string>") -> Policy:
    """Compile the TOML policy ``text``; ``source`` names it in errors."""
    return _Loader(text, source).load()


def load_policy(path: str | PathLike[str]) -> Policy:
    """Read and compile the policy file at ``path``."""
    try:
        raw = FsPath(path).read_bytes()
    except OSError as exc:
        raise PolicyError(str(path), None, "", f"cannot read the policy file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(str(path), None, "", f"not UTF-8 text: {exc}") from None
    return loads_policy(text, str(path))


__all__ = ["ALLOWED_KEYS", "load_policy", "loads_policy"]
