"""The use case behind ``stockade run`` and ``stockade deploy --host``,
without the command line: read and check the workload (a module or a
package) and its limits, choose the trust policy, derive what the Keep must
enforce, and build the :class:`~stockade.client.deploy.DeployPlan`. The
commands in :mod:`stockade.commands` only parse options into
:class:`RunOptions` and print; nothing here prints or exits.

Heavy modules (the policy compiler, cryptography, the package format) are
imported inside the functions: ``stockade run`` starts its Keep first and
imports them while the Keep starts.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stockade.errors import UsageError

if TYPE_CHECKING:
    from stockade.client.deploy import DeployPlan, StdinFile
    from stockade.client.steward import StewardChoice
    from stockade.package import Manifest, Package
    from stockade.policy import Policy
    from stockade.wire.messages import Expect, FileEntry, Limits, SocketAddress

MAX_TIMEOUT_S = 7 * 24 * 3600
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def state_dir(explicit: Path | None = None) -> Path:
    """The local state directory (sim chip, Keep logs, manager state):
    ``explicit``, else $STOCKADE_STATE_DIR, else $XDG_STATE_HOME/stockade
    or ~/.local/state/stockade."""
    if explicit is not None:
        return explicit
    env = os.environ.get("STOCKADE_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "stockade"


def compile_cache_dir() -> Path:
    """Where local Keeps (``stockade run``) keep their sealed compile cache:
    $XDG_CACHE_HOME/stockade/compile or ~/.cache/stockade/compile."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "stockade" / "compile"


def parse_size(text: str, what: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    number = t[:-1] if unit else t
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a size (examples: 512K, 64M, 1G)") from None
    if value <= 0:
        raise UsageError(f"{what} must be positive")
    return value


def parse_env(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return tuple(sorted(env.items()))


def parse_network(opts: RunOptions, manifest: Manifest, steward: bool) -> tuple[SocketAddress, ...]:
    """--listen / --connect NAME=HOST:PORT as the configuration's socket
    addresses, each for a socket the manifest declares; refuses (before
    anything is sent) a package with sockets deployed without a steward
    (``steward``: the deploy has one, from --steward or the manifest) or
    to a VM Keep."""
    from stockade.wire.messages import SocketAddress, check_socket_address

    declared = {(s.kind, s.name) for s in manifest.network}
    found: dict[tuple[str, str], SocketAddress] = {}
    for kind, items in (("listen", opts.listen), ("connect", opts.connect)):
        for item in items:
            name, sep, address = item.partition("=")
            if not sep or not name:
                raise UsageError(f"--{kind} {item!r}: expected NAME=HOST:PORT")
            if (kind, name) not in declared:
                names = ", ".join(sorted(n for k, n in declared if k == kind)) or "none"
                raise UsageError(
                    f"--{kind} {name}: the package declares no {kind} socket {name!r} "
                    f"([[network.{kind}]] in its manifest; declared: {names})"
                )
            if (kind, name) in found:
                raise UsageError(f"--{kind} {name}: given twice")
            try:
                check_socket_address(address, kind)
            except ValueError as exc:
                raise UsageError(f"--{kind} {name}: {exc}") from None
            found[kind, name] = SocketAddress(kind, name, address)
    if manifest.network:
        sockets = ", ".join(f"{s.kind} {s.name!r}" for s in manifest.network)
        if opts.backend == "vm":
            raise UsageError(
                f"the package declares network sockets ({sockets}); VM Keeps do not offer them "
                "(docs/limitations.md): use a process Keep (--backend sim, sim-snp or sim-tdx)"
            )
        if not steward:
            raise UsageError(
                f"the package declares network sockets ({sockets}), which need a workload certificate "
                "for attested TLS: deploy with --steward URL"
            )
        missing = sorted(
            s.name for s in manifest.network if s.kind == "connect" and ("connect", s.name) not in found
        )
        if missing:
            raise UsageError(
                f"the package's connect socket(s) {', '.join(missing)} need --connect NAME=HOST:PORT"
            )
    return tuple(found[k] for k in sorted(found))


def check_publish(opts: RunOptions, manifest: Manifest) -> tuple[str, ...]:
    """The --publish names, each a listen socket the package declares and
    not also given --listen; UsageError otherwise (before anything is sent)."""
    declared = {s.name for s in manifest.network if s.kind == "listen"}
    listened = {item.partition("=")[0] for item in opts.listen}
    for name in opts.publish:
        if name not in declared:
            names = ", ".join(sorted(declared)) or "none"
            raise UsageError(
                f"--publish {name}: the package declares no listen socket {name!r} "
                f"([[network.listen]] in its manifest; declared: {names})"
            )
        if name in listened:
            raise UsageError(f"--publish {name} and --listen {name}: give one (published: the host chooses)")
    if len(set(opts.publish)) != len(opts.publish):
        raise UsageError("--publish: a name given twice")
    return opts.publish


def _read(path: Path, item: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--file {item!r}: cannot read {path}: {exc.strerror}") from None


def parse_files(items: tuple[str, ...]) -> tuple[FileEntry, ...]:
    """``HOST[:GUEST]`` items to file entries. Directories are sent
    recursively (symbolic links to files are followed, like ``cp -rL``);
    a guest path of ``/`` mounts a directory's content as the root."""
    from stockade.wire.messages import FileEntry

    entries: dict[str, FileEntry] = {}
    for item in items:
        host, guest = item, None
        if ":" in item:
            head, _, tail = item.rpartition(":")
            if tail.startswith("/"):
                host, guest = head, tail
        src = Path(host)
        if not src.exists():
            raise UsageError(f"--file {item!r}: {host} does not exist")
        guest = guest or "/" + src.name
        guest = "/" + guest.strip("/") if guest.strip("/") else "/"
        if src.is_dir():
            entries[guest] = FileEntry(guest, None)
            for path in sorted(src.rglob("*")):
                rel = path.relative_to(src).as_posix()
                target = (guest.rstrip("/") + "/" + rel) if guest != "/" else "/" + rel
                if path.is_dir():
                    entries[target] = FileEntry(target, None)
                elif path.exists():
                    entries[target] = FileEntry(target, _read(path, item))
                else:
                    raise UsageError(f"--file {item!r}: {path} is a dangling symbolic link")
        else:
            if guest == "/":
                raise UsageError(f"--file {item!r}: a file cannot be mounted as /")
            entries[guest] = FileEntry(guest, _read(src, item))
    return tuple(entries[k] for k in sorted(entries))


def parse_secrets(items: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    out: dict[str, bytes] = {}
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep or not name:
            raise UsageError("--secret: expected NAME=@FILE")
        if not ref.startswith("@"):
            # Never echo the value: it may be the secret itself.
            raise UsageError(
                f"--secret {name}: values are read from files (NAME=@FILE) so that "
                "they never appear in process arguments"
            )
        if "/" in name or name in (".", ".."):
            raise UsageError(f"--secret {name}: the name must be a plain file name")
        path = Path(ref[1:])
        try:
            out[name] = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"--secret {name}: cannot read {path}: {exc.strerror}") from None
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class RunOptions:
    wasm: Path
    args: tuple[str, ...]
    backend: str
    allow_sim: bool
    policy: Path | None
    env: tuple[str, ...]
    stdin: str | None
    files: tuple[str, ...]
    secret_refs: tuple[str, ...]
    timeout: float | None
    memory: str | None
    max_output: str | None
    disk: str | None
    expect_measurement: str | None
    signers: tuple[Path, ...]
    min_signatures: int | None
    expect_digests: tuple[str, ...]
    as_json: bool
    quiet: bool
    state_dir: Path | None
    #: Only ``stockade deploy --host``: the package is uploaded to the keep
    #: manager and the Keep loads it from there (docs/package.md, staged).
    stage_on_host: bool = False
    #: TDX/SGX: a directory of Intel collateral (client/collateral.py);
    #: None: the local collateral cache.
    collateral: Path | None = None
    #: Never fetch collateral: only --collateral DIR or the cache.
    offline: bool = False
    #: Backend vm: the Keep image directory (None: the state directory's)
    #: and the acceleration ("auto", "kvm", "tcg").
    image: Path | None = None
    accel: str = "auto"
    #: Print the phases and steps after the run (--timings).
    timings: bool = False
    #: ``stockade run``: no sealed compile cache (--no-compile-cache).
    no_compile_cache: bool = False
    #: --listen / --connect NAME=HOST:PORT: addresses of the package's
    #: network sockets (keep/netsock.py).
    listen: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    #: deploy --publish NAME: listen sockets the keep manager publishes on
    #: a port of its own and forwards to the Keep (ADR 0027 addendum).
    publish: tuple[str, ...] = ()
    #: --steward URL (over the manifest's ``[steward] url``) and
    #: --steward-ca FILE: the Keep gets a service certificate (issue 17).
    steward: str | None = None
    steward_ca: Path | None = None


#: Keep backend -> the platform its evidence claims (the sim backends).
SIM_BACKEND_PLATFORM = {"sim": "sim", "sim-snp": "sim", "sim-tdx": "sim-tdx", "vm": "sim"}


def choose_policy(opts: RunOptions, runtime_measurement: bytes) -> tuple[Policy, str]:
    """The policy for this run and a one-line note for the summary."""
    from stockade.policy import default_policy, development_policy, load_policy

    expected = runtime_measurement
    pinned = "this Keep image" if opts.backend == "vm" else "this installation's Keep runtime"
    if opts.expect_measurement:
        try:
            expected = bytes.fromhex(opts.expect_measurement)
        except ValueError:
            expected = b""
        if len(expected) != 48:
            raise UsageError("--expect-measurement must be 96 hex digits (a 48-byte launch digest)")
        pinned = "--expect-measurement"
    if opts.policy is not None:
        if opts.expect_measurement:
            raise UsageError("--expect-measurement and --policy: put the measurements in the policy file")
        policy = load_policy(opts.policy)
        platform = SIM_BACKEND_PLATFORM.get(opts.backend, "sim")
        if opts.allow_sim and platform not in policy.platforms:
            raise UsageError(f"--allow-sim: the policy {opts.policy} does not list {platform} in platforms")
        return policy, f"{policy.name!r} ({opts.policy}) accepted the claims"
    if opts.allow_sim:
        return development_policy(expected), f"development (--allow-sim); measurement pinned to {pinned}"
    return default_policy(expected), f"built-in default; measurement pinned to {pinned}"


DEFAULT_LIMITS = {
    "timeout_ms": 30_000,
    "memory_bytes": 256 * 1024**2,
    "output_bytes": 64 * 1024**2,
    "disk_bytes": 256 * 1024**2,
}


@dataclass(frozen=True)
class Prepared:
    """The workload to deploy, as a package (a bare module is wrapped in an
    unsigned in-memory package): its bytes and their parsed form, parsed
    once; with the limits that apply to it."""

    package: bytes
    parsed: Package
    limits: Limits
    from_module: bool

    @property
    def digest(self) -> bytes:
        return self.parsed.digest

    @property
    def manifest(self) -> Manifest:
        return self.parsed.manifest

    def limits_map(self) -> dict[str, int]:
        return self.limits.to_map()


def prepare(opts: RunOptions) -> Prepared:
    """Read WASM (a module or a package), check it and compute the limits:
    command-line flags override the package manifest's, which override the
    defaults."""
    import math

    from stockade.errors import WorkloadRejected
    from stockade.package import Package
    from stockade.package.format import wrap_module
    from stockade.wire.messages import Limits

    try:
        data = opts.wasm.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {opts.wasm}: {exc.strerror}") from None
    if data[:4] == b"\0asm":
        parsed = wrap_module(data, opts.wasm.stem)
        package, from_module = parsed.to_bytes(), True
    else:
        try:
            parsed = Package.from_bytes(data)
        except WorkloadRejected as exc:
            if data[:1] and 0xA0 <= data[0] <= 0xBF:  # a CBOR map: meant as a package
                raise WorkloadRejected(f"{opts.wasm}: {exc.detail}") from None
            raise WorkloadRejected(
                f"{opts.wasm} is not a WebAssembly module (no \\0asm magic number) "
                f"nor a valid stockade package ({exc.detail})"
            ) from None
        package, from_module = data, False
    if opts.timeout is not None and (
        not math.isfinite(opts.timeout) or not 0 < opts.timeout <= MAX_TIMEOUT_S
    ):
        raise UsageError(f"--timeout must be a number of seconds in (0, {MAX_TIMEOUT_S}]")
    limits = {**DEFAULT_LIMITS, **dict(parsed.manifest.limits)}
    if opts.timeout is not None:
        limits["timeout_ms"] = max(1, int(opts.timeout * 1000))
    if opts.memory is not None:
        limits["memory_bytes"] = parse_size(opts.memory, "--memory")
    if opts.max_output is not None:
        limits["output_bytes"] = parse_size(opts.max_output, "--max-output")
    if opts.disk is not None:
        limits["disk_bytes"] = parse_size(opts.disk, "--disk")
    if limits["timeout_ms"] > MAX_TIMEOUT_S * 1000:
        raise WorkloadRejected(f"the package's timeout_ms exceeds {MAX_TIMEOUT_S} seconds")
    return Prepared(package, parsed, Limits(**limits), from_module)


def expectations(opts: RunOptions, prepared: Prepared, policy: Policy) -> tuple[Expect, tuple[str, ...]]:
    """What the Keep must enforce (pinned digests: trusted boot; trusted
    signers), from the policy's ``[workload]`` table or from --expect-digest
    and --signer; checked here first so that a bad package fails before it
    leaves; and lines for the summary."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from stockade.errors import WorkloadRejected
    from stockade.package import load_public_key, verify_signatures
    from stockade.package.signing import raw_public_key
    from stockade.wire.messages import Expect

    flags = opts.signers or opts.expect_digests or opts.min_signatures is not None
    if policy.workload is not None and flags:
        raise UsageError(
            "--signer, --min-signatures and --expect-digest cannot be combined with a policy that has a "
            "[workload] table: put the signers and digests in the policy file"
        )
    digests: list[bytes] = []
    keys: list[Ed25519PublicKey] = []
    required = 0
    if policy.workload is not None:
        digests = list(policy.workload.digests)
        keys = [Ed25519PublicKey.from_public_bytes(raw) for raw in policy.workload.signers]
        required = policy.workload.min_signatures
        pin_source = f"the [workload] digests of policy {policy.source}"
    else:
        for text in opts.expect_digests:
            try:
                value = bytes.fromhex(text.removeprefix("sha256:"))
            except ValueError:
                value = b""
            if len(value) != 32:
                raise UsageError(
                    f"--expect-digest {text!r}: expected 64 hex digits (a package content digest)"
                )
            digests.append(value)
        keys = [load_public_key(path) for path in opts.signers]
        required = opts.min_signatures if opts.min_signatures is not None else min(1, len(keys))
        if opts.min_signatures is not None and not 1 <= required <= len(keys):
            raise UsageError(
                f"--min-signatures must be between 1 and the number of --signer keys ({len(keys)})"
            )
        pin_source = "the --expect-digest values"
    if digests and prepared.digest not in digests:
        raise WorkloadRejected(
            f"{opts.wasm} has digest {prepared.digest.hex()}, which is not among {pin_source}"
        )
    notes: list[str] = []
    if keys and policy.workload is not None and policy.workload.require_log:
        # [workload] require_log is enforced here, by the client, before
        # anything is sent: only signatures with an inclusion proof under a
        # pinned log key count, and only their keys go to the Keep as
        # trusted signers, so the Keep verifies and measures exactly those
        # (docs/policy.md, "require_log").
        from stockade.package.logproof import require_logged

        keys = list(
            require_logged(
                prepared.parsed,
                keys,
                policy.workload.log_keys,
                required,
                enforcer=f"policy {policy.name!r}, checked by this client before deploying",
            )[0]
        )
        notes.append(
            f"  logged       {len(keys)} trusted signature(s) have inclusion proofs under a pinned log key "
            "(require_log, checked here; only they count)"
        )
    if keys:
        verified = verify_signatures(prepared.parsed, keys, required)
        roles = ", ".join(f"{s.role} {s.kid[:16]}…" for s in verified.signers)
        notes.append(f"  signed by    {roles} (checked here, and again in the Keep)")
    if digests:
        notes.append("  trusted boot the Keep refuses any package but the pinned digest(s)")
    expect = Expect(
        digests=tuple(sorted(set(digests))),
        signers=tuple(sorted({raw_public_key(k) for k in keys})),
        min_signatures=required if keys else 0,
    )
    return expect, tuple(notes)


@dataclass(frozen=True)
class PlannedDeploy:
    """A deploy ready to run: the plan, the policy that appraises the Keep,
    a one-line note on the policy and extra lines for the summary."""

    plan: DeployPlan
    policy: Policy
    policy_note: str
    notes: tuple[str, ...]
    #: The steward the Keep is to get its service certificate from (None: no
    #: certificate); its log key is fetched before the deploy.
    steward: StewardChoice | None = None


def choose_steward(opts: RunOptions, prepared: Prepared) -> StewardChoice | None:
    """The steward of this deploy (--steward, else the manifest's
    ``[steward] url``, with --steward-ca), or None; no network."""
    from stockade.client.steward import choose

    return choose(opts.steward, opts.steward_ca, prepared.manifest, opts.backend)


def read_stdin(opts: RunOptions, secrets: tuple[tuple[str, bytes], ...] = ()) -> bytes | StdinFile:
    """The workload's standard input: ``--stdin FILE``, ``-`` (ours), or none.

    A regular file of at most INLINE_STDIN bytes is read here, whole: it
    travels in the Release (with the ``secrets``) when that fits in a frame.
    A larger file, or ``-`` (a pipe, a terminal or a file), stays open and
    is streamed in Stdin messages while the workload runs, read only after
    the release; there is no limit on its size (docs/limitations.md, stdin)."""
    from stockade.client.deploy import INLINE_STDIN, StdinFile

    if opts.stdin is None:
        return b""
    if opts.stdin == "-":
        return StdinFile(0)
    try:
        fd = os.open(opts.stdin, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"--stdin: cannot read {opts.stdin}: {exc.strerror}") from None
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        os.close(fd)
        raise UsageError(f"--stdin: cannot read {opts.stdin}: Is a directory")
    if not stat.S_ISREG(info.st_mode) or info.st_size > INLINE_STDIN:
        return StdinFile(fd)  # open for the rest of this process
    with os.fdopen(fd, "rb") as f:
        data = f.read(INLINE_STDIN + 1)
    if len(data) > INLINE_STDIN:  # it grew meanwhile: read it as a stream
        try:
            fd = os.open(opts.stdin, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"--stdin: cannot read {opts.stdin}: {exc.strerror}") from None
        return StdinFile(fd)
    return data


def plan_deploy(
    opts: RunOptions,
    prepared: Prepared,
    runtime_measurement: bytes,
    staged: bool = False,
    stdin: bytes | StdinFile | None = None,
) -> PlannedDeploy:
    """Choose the policy (``runtime_measurement`` is what the measurement is
    pinned to unless ``opts`` says otherwise), derive the expectations and
    build the plan; ``staged``: the host provides the package bytes;
    ``stdin``: the workload's input as :func:`read_stdin` gave it
    (``deploy --fleet`` opens it once for all its attempts: a stream is
    read only after the release, which no attempt follows), else opened
    here."""
    from stockade.client.deploy import DeployPlan
    from stockade.wire.messages import Config

    policy, note = choose_policy(opts, runtime_measurement)
    expect, notes = expectations(opts, prepared, policy)
    if staged and prepared.digest not in expect.digests:
        # The host provides the bytes: pin what we mean, so that the Keep
        # itself refuses a swapped package (the identity check catches it too).
        expect = dataclasses.replace(expect, digests=tuple(sorted({*expect.digests, prepared.digest})))
        notes = (
            *notes,
            "  staged       package uploaded to the host; the Keep loads it only if its digest matches",
        )
    config = Config(
        args=opts.args,
        env=parse_env(opts.env),
        files=parse_files(opts.files),
        limits=prepared.limits,
        network=parse_network(opts, prepared.manifest, choose_steward(opts, prepared) is not None),
    )
    secrets = parse_secrets(opts.secret_refs)
    steward = choose_steward(opts, prepared)
    plan = DeployPlan(
        package=None if staged else prepared.package,
        digest=prepared.digest,
        config=config,
        expect=expect,
        secrets=secrets,
        stdin=read_stdin(opts, secrets) if stdin is None else stdin,
        required_secrets=prepared.manifest.secrets,
        steward=None if steward is None else steward.request(),
    )
    if steward is not None:
        notes = (
            *notes,
            f"  steward      {steward.url} (from {steward.source}): the Keep gets a service certificate "
            "before the workload runs",
        )
    return PlannedDeploy(plan, policy, note, notes, steward)
