"""Launch digest of the Keep runtime: what the sim PSP reports as MEASUREMENT.

The keep loader computes this over the code it is about to start, the way a
hypervisor feeds the pages of a guest image to the AMD PSP during
SNP_LAUNCH_UPDATE; the PSP (or the sim PSP) records the result in the
MEASUREMENT field. ``stockade policy reference`` computes the same value, so a
deployer can pin the expected measurement of a given stockade release.

What is measured (ADR 0013): the BYTES of everything the Keep loads.

* every module the Keep may import, listed in :mod:`stockade.measure.keep_modules`
  (generated from real runs of the Keep entry points, and enforced inside the
  Keep by :mod:`stockade.keep.guard`): stockade's own modules, third-party
  modules and extension modules, stdlib modules and ``lib-dynload``
  extensions. Each name is resolved to its file the way the Keep's import
  system will resolve it (``importlib.machinery.PathFinder`` over the Keep's
  ``sys.path``), without importing it. Built-in and frozen modules have no
  file of their own: their code is in the interpreter, measured below;
* the shared libraries the Keep loads without the import system (ctypes:
  wasmtime's ``_libwasmtime.so``), listed in the same module;
* the interpreter executable and, if Python is built as a shared library,
  ``libpython``.

Each entry is (label, SHA-256 of the file's bytes: the digest wheel RECORD
files use, and 1.5x faster than SHA-384 with the SHA extensions of x86
CPUs; the launch digest over the entries is SHA-384); labels are module names
and package-relative paths, never absolute paths, so the same files give the
same digest in any directory. Changing a byte of any of them, a module that
resolves to a different kind of file (a planted ``foo.py`` where there was
none), or the list itself, changes the measurement.

Before measuring, the ``.pth`` files of the Keep's site directories are
checked: a line that ``site`` would execute (one starting with ``import``)
refuses the measurement with :class:`stockade.errors.UnmeasuredCode`.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from stockade import oneshot
from stockade.measure.sitecheck import pth_paths, site_dirs

DOMAIN = b"stockade-launch/v2\x00"

#: Modules ``site`` imports at every start-up if they exist on the path,
#: before any Keep code runs (Lib/site.py execsitecustomize/execusercustomize;
#: Debian's python3.11 ships a sitecustomize.py). Always in the measured list,
#: so that their bytes, or their absence, are measured.
STARTUP_HOOKS = frozenset({"sitecustomize", "usercustomize"})

#: Module kinds that have a file of their own (hashed); the others do not.
FILE_KINDS = ("source", "extension", "sourceless")


@dataclass(frozen=True)
class MeasuredFile:
    """One entry of the launch digest."""

    label: str  # "module:NAME", "library:PKG/REL", "interpreter:executable", "interpreter:libpython"
    kind: str  # source, extension, sourceless, builtin, frozen, namespace, absent, library, executable
    path: Path | None
    sha256: bytes  # of the file's bytes; b"" when there is no file

    def entry(self) -> tuple[str, bytes]:
        return f"{self.label}\x00{self.kind}", self.sha256


def package_root() -> Path:
    """Directory of the installed ``stockade`` package."""
    return Path(__file__).resolve().parent.parent


# == the Keep's sys.path and its .pth files ============================================================


def stdlib_path() -> list[str]:
    """The interpreter's own entries of ``sys.path`` (zip, stdlib, lib-dynload),
    as Modules/getpath.py computes them; independent of PYTHONPATH."""
    # In a venv, sys.base_prefix is the installation the stdlib comes from.
    base = {"installed_base": sys.base_prefix, "base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    stdlib = sysconfig.get_path("stdlib", vars=base)
    platstdlib = sysconfig.get_path("platstdlib", vars=base)
    zipname = f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    zipped = os.path.join(os.path.dirname(stdlib), zipname)
    return [zipped, stdlib, os.path.join(platstdlib, "lib-dynload")]


def keep_sys_path() -> list[str]:
    """``sys.path`` of ``python -I -m stockade.keep`` started with this
    interpreter: no script directory (``-I`` implies ``-P``), no PYTHONPATH,
    no user site; the stdlib, then each site directory followed by the paths
    its ``.pth`` files add. Refuses ``.pth`` files that run code."""
    path: list[str] = []
    for entry in stdlib_path():
        if entry not in path:
            path.append(entry)
    for site_dir in site_dirs():
        for entry in [site_dir, *pth_paths(site_dir)]:
            if entry not in path:
                path.append(entry)
    return path


# == resolving a module name to its file, without importing it ==========================================


def recordable(name: str) -> bool:
    """Names that belong in the measured list: not ``__main__`` (the entry
    module under another name), not ``__mp_main__``."""
    return name not in ("__main__", "__mp_main__")


def resolve(
    name: str,
    search_path: list[str],
    _cache: dict[str, tuple[str, str | None, list[str] | None]],
    deps: dict[str, StatKey | None] | None = None,
) -> tuple[str, str | None]:
    """(kind, file) of module ``name`` as the Keep's import system would find
    it: built-in, frozen, then the path finder (the default ``sys.meta_path``
    order), the parent package's ``__path__`` for submodules. ``deps``, if
    given, gets the stat key of every directory looked in, taken before
    looking (what the answer depends on: :func:`keep_measurement`'s memo)."""
    hit = _cache.get(name)
    if hit is not None:
        return hit[0], hit[1]
    parent, _, _ = name.rpartition(".")
    locations: list[str] | None
    frozen = importlib.machinery.FrozenImporter.find_spec(name)
    if not parent and name in sys.builtin_module_names:
        kind, origin, locations = "builtin", None, None
    elif frozen is not None:  # its code object is in the interpreter (libpython)
        kind, origin = "frozen", None
        locations = list(frozen.submodule_search_locations or []) or None
    else:
        if parent:
            resolve(parent, search_path, _cache, deps)
            where = _cache[parent][2]
        else:
            where = search_path
        if deps is not None and where is not None:
            for directory in where:
                if directory not in deps:
                    deps[directory] = stat_key(directory)
        spec = importlib.machinery.PathFinder.find_spec(name, where) if where is not None else None
        if spec is None:
            kind, origin, locations = "absent", None, None
        else:
            locations = list(spec.submodule_search_locations) if spec.submodule_search_locations else None
            loader = spec.loader
            if spec.origin is None or loader is None:
                kind, origin = "namespace", None
            elif isinstance(loader, importlib.machinery.ExtensionFileLoader):
                kind, origin = "extension", spec.origin
            elif isinstance(loader, importlib.machinery.SourcelessFileLoader):
                kind, origin = "sourceless", spec.origin
            else:
                kind, origin = "source", spec.origin
    _cache[name] = (kind, origin, locations)
    return kind, origin


# == hashing, with a per-process cache ====================================================================

_HASHES: dict[tuple[str, int, int, int, int, int], bytes] = {}
_HASHES_LOCK = threading.Lock()

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): what changes when a
#: file is written or replaced, or a directory gains or loses an entry (a
#: write sets ctime, which a user cannot set back).
StatKey = tuple[int, int, int, int, int]


def stat_key(path: str) -> StatKey | None:
    """The :data:`StatKey` of ``path`` (symlinks followed); None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str) -> bytes:
    """SHA-256 of a file's bytes, cached in this process keyed on (path,
    st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): a file written or
    replaced since gets a new key (a write sets ctime, which a user cannot
    set back)."""
    return _file_sha256_keyed(path)[1]


def _file_sha256_keyed(path: str) -> tuple[StatKey, bytes]:
    """:func:`file_sha256` and the stat key of the bytes it hashed (taken
    from the open file before reading it)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        skey = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        key = (path, *skey)
        with _HASHES_LOCK:
            hit = _HASHES.get(key)
        if hit is not None:
            return skey, hit
        digest = hashlib.file_digest(f, "sha256").digest()
    with _HASHES_LOCK:
        _HASHES[key] = digest
    return skey, digest


def clear_cache() -> None:
    with _HASHES_LOCK:
        _HASHES.clear()
    with _MEMO_LOCK:
        _MEMO.clear()


# == the measured set ====================================================================================


def interpreter_files(executable: str | None = None) -> list[tuple[str, str]]:
    """(label, path) of the interpreter's code files: the executable, and
    libpython when the executable runs from it. That is read from this
    process's own mappings (the Keep runs this same executable):
    ``Py_ENABLE_SHARED`` is not enough, since Debian's python3.11 ships a
    libpython for embedding but its ``/usr/bin/python3.11`` is linked
    statically."""
    files = [("interpreter:executable", os.path.realpath(executable or sys.executable))]
    libpython = _mapped_libpython()
    if libpython is not None:
        files.append(("interpreter:libpython", libpython))
    return files


def _mapped_libpython() -> str | None:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("libpython"):
                    return os.path.realpath(fields[5].strip())
        return None
    except OSError:
        pass
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):  # no /proc: what the build says
        lib = os.path.join(
            sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or ""
        )
        if os.path.isfile(lib):
            return os.path.realpath(lib)
    return None


def ctypes_libraries(mapped: Iterable[str], search_path: list[str] | None = None) -> list[tuple[str, str]]:
    """(top-level directory, relative path) of the files in ``mapped`` (paths
    from /proc/PID/maps) that live in the Keep's search path and are not the
    file of an importable module: shared libraries loaded with ctypes."""
    search_path = search_path if search_path is not None else keep_sys_path()
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found: list[tuple[str, str]] = []
    longest_first = sorted(search_path, key=len, reverse=True)  # lib-dynload lies inside the stdlib
    for path in mapped:
        for entry in longest_first:
            if not path.startswith(entry.rstrip("/") + "/"):
                continue
            rel = Path(path).relative_to(entry)
            if len(rel.parts) < 2:
                break  # a top-level extension module (e.g. _cffi_backend...so): a module
            name = rel.name
            stem = next((name[: -len(s)] for s in suffixes if name.endswith(s)), None)
            module = ".".join([*rel.parts[:-1], stem]) if stem else None
            if module is not None and module.isascii() and all(p.isidentifier() for p in module.split(".")):
                _, origin = resolve(module, search_path, {})
                if origin is not None and os.path.realpath(origin) == os.path.realpath(path):
                    break  # an extension module: measured as a module
            found.append((rel.parts[0], Path(*rel.parts[1:]).as_posix()))
            break
    return sorted(set(found))


def measured_files(
    modules: Iterable[str] | None = None,
    libraries: Iterable[tuple[str, str]] | None = None,
    search_path: list[str] | None = None,
    interpreter: list[tuple[str, str]] | None = None,
    deps: dict[str, StatKey | None] | None = None,
) -> list[MeasuredFile]:
    """Every entry of the launch measurement, sorted by label. The defaults
    are this installation's Keep: the generated list, the Keep's sys.path
    (after the .pth check) and this interpreter; tests pass a copied tree.
    ``deps``, if given, gets the stat key of every directory looked in and
    every file hashed, each taken before it was used."""
    if modules is None or libraries is None:
        from stockade.measure import keep_modules

        modules = keep_modules.MODULES if modules is None else modules
        libraries = keep_modules.LIBRARIES if libraries is None else libraries
    search_path = keep_sys_path() if search_path is None else search_path
    interpreter = interpreter_files() if interpreter is None else interpreter
    cache: dict[str, tuple[str, str | None, list[str] | None]] = {}
    found: list[tuple[str, str, str | None]] = []  # (label, kind, file to hash)
    for name in sorted(set(modules)):
        kind, origin = resolve(name, search_path, cache, deps)
        found.append((f"module:{name}", kind, origin if kind in FILE_KINDS else None))
    for top, rel in sorted(set(libraries)):
        if deps is not None:
            for entry in search_path:  # every directory _find_library may look in
                parts = Path(top, rel).parts
                for i in range(len(parts)):
                    candidate = os.path.join(entry, *parts[:i])
                    deps.setdefault(candidate, stat_key(candidate))
        path = _find_library(top, rel, search_path)
        found.append((f"library:{top}/{rel}", "library" if path else "absent", str(path) if path else None))
    found.extend((label, "executable", file) for label, file in interpreter)
    # hashlib releases the GIL while hashing: two threads use both cores on
    # a cold start (most of the bytes are three files: libwasmtime, libpython
    # and cryptography's Rust extension).
    files = [file for _, _, file in found if file is not None]
    digests = _hash_all(files, deps=deps)
    out = [
        MeasuredFile(label, kind, Path(file) if file else None, digests[file] if file else b"")
        for label, kind, file in found
    ]
    return sorted(out, key=lambda m: m.label)


def _hash_all(
    files: list[str], workers: int = 2, deps: dict[str, StatKey | None] | None = None
) -> dict[str, bytes]:
    """SHA-256 of each file, in ``workers`` threads: the files are dealt
    largest first to whichever thread is free (no executor: importing
    concurrent.futures costs more than the threads here)."""
    pending = sorted(set(files), key=_size, reverse=True)
    lock = threading.Lock()
    digests: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                if not pending or errors:
                    return
                path = pending.pop(0)
            try:
                skey, digest = _file_sha256_keyed(path)
            except BaseException as exc:  # re-raised in the caller's thread
                with lock:
                    errors.append(exc)
                return
            with lock:
                digests[path] = digest
                if deps is not None:
                    deps[path] = skey

    threads = [threading.Thread(target=work, daemon=True, name="measure-hash") for _ in range(workers - 1)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return digests


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # hashed (and its error raised) like any other


def _find_library(top: str, rel: str, search_path: list[str]) -> Path | None:
    for entry in search_path:
        candidate = Path(entry, top, rel)
        if candidate.is_file():
            return candidate
    return None


def launch_digest(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """SHA-384 launch digest (48 bytes, the size of SNP MEASUREMENT) over
    (label, file digest) pairs, order-independent, each field length-prefixed."""
    h = hashlib.sha384(DOMAIN)
    for label, digest in sorted(entries):
        encoded = label.encode("utf-8", "surrogateescape")
        h.update(len(encoded).to_bytes(4, "big") + encoded)
        h.update(len(digest).to_bytes(1, "big") + digest)
    return h.digest()


#: keep_measurement's memo: (modules, libraries, search path, interpreter
#: files) -> (the stat key of every directory and file the digest depends
#: on, the digest).
_MEMO: dict[tuple[object, ...], tuple[tuple[tuple[str, StatKey | None], ...], bytes]] = {}
_MEMO_LOCK = threading.Lock()


def keep_measurement(files: list[MeasuredFile] | None = None) -> bytes:
    """The measurement of this installation's Keep runtime (or of ``files``).

    Memoized in this process: the Keep's search path is recomputed (with its
    ``.pth`` check) and the interpreter's files listed on every call; the
    module resolution and the hashes are reused while every directory looked
    in and every file hashed has the stat key it had when it was used (a
    planted, removed or renamed module changes its directory's mtime and
    ctime; a written file its own). A warm fork server re-measures before
    every fork, and a client agent's deploy pins it (ADR 0022, ADR 0028):
    that costs a stat per entry instead of ~40 ms of resolution."""
    if files is not None:
        return launch_digest(m.entry() for m in files)
    from stockade.measure import keep_modules

    return memoized_measurement(
        keep_modules.MODULES, keep_modules.LIBRARIES, keep_sys_path(), interpreter_files()
    )


def memoized_measurement(
    modules: Iterable[str],
    libraries: Iterable[tuple[str, str]],
    search_path: list[str],
    interpreter: list[tuple[str, str]],
) -> bytes:
    """``launch_digest`` of :func:`measured_files` for these arguments,
    memoized on the stat keys of what it depends on (:func:`keep_measurement`)."""
    modules, libraries = sorted(set(modules)), sorted(set(libraries))
    key = (tuple(modules), tuple(libraries), tuple(search_path), tuple(interpreter))
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
    if hit is not None and all(stat_key(path) == skey for path, skey in hit[0]):
        return hit[1]
    deps: dict[str, StatKey | None] = {}
    digest = launch_digest(
        m.entry() for m in measured_files(modules, libraries, search_path, interpreter, deps)
    )
    with _MEMO_LOCK:
        _MEMO[key] = (tuple(deps.items()), digest)
    return digest


def measure_in_background() -> Callable[[], bytes]:
    """Start :func:`keep_measurement` in a daemon thread; the returned
    callable waits for the digest (and raises what the measurement raised).
    For callers that have other work to do first (a cold measurement hashes
    tens of MB)."""
    return oneshot.start(keep_measurement, "keep-measurement").result
