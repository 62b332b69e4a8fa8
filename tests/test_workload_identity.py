"""Workload identity: the Keep checks and measures the package, attests the
event log, and the client releases secrets only after that second
attestation names the workload it asked for (issue 8).

Three levels: the CLI end to end on sim; library sessions against a real
Keep where a test plays a hostile host or a careless client (a plan the CLI
would refuse, so that the Keep's own checks are what refuses); and
appraise_identity against evidence from the real sim PSP with one thing
wrong at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stockade.binding import eventlog
from stockade.binding.eventlog import Event
from stockade.binding.reportdata import identity_report_data, report_data_for
from stockade.client.attest import Appraisal, TrustConfig, appraise
from stockade.client.deploy import DeployPlan, DeployResult, deploy, send_hello
from stockade.client.identity import appraise_identity
from stockade.errors import VerificationFailed, WorkloadRejected
from stockade.evidence.sim import chip
from stockade.evidence.sim.attester import SimAttester
from stockade.evidence.sim.local import serve_in_thread
from stockade.host.loader import start_keep
from stockade.keep import identity as keep_identity
from stockade.keep.loading import STAGED_NAME
from stockade.measure.launch import keep_measurement
from stockade.package import Manifest, sign
from stockade.package.format import Package, encode
from stockade.package.signing import raw_public_key
from stockade.policy import development_policy
from stockade.wire.messages import Config, Expect, Identity, Limits
from stockade.wire.protocol import ClientSession

ROOT = Path(__file__).resolve().parent.parent
WORDCOUNT = ROOT / "examples" / "wordcount" / "wordcount.wasm"
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

pytestmark = pytest.mark.slow


def make_package(wasm: Path, name: str, args: tuple[str, ...] = (), secrets_: tuple[str, ...] = ()) -> bytes:
    manifest = Manifest(name=name, version="1.0.0", entry="app.wasm", args=args, secrets=secrets_)
    return encode(manifest, {"app.wasm": wasm.read_bytes()})


def digest_of(package: bytes) -> bytes:
    return Package.from_bytes(package).digest


@pytest.fixture(scope="module")
def author() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def canary() -> bytes:
    return b"canary-" + secrets.token_hex(16).encode()


@dataclasses.dataclass
class Outcome:
    result: DeployResult | None
    error: Exception | None
    stdout: bytes
    released: list[Any]
    keep_log: bytes


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every release the client session emits (the only message with secrets)."""
    calls: list[Any] = []
    original = ClientSession.release

    def spy(self: ClientSession, release: Any) -> bytes:
        calls.append(release)
        return original(self, release)

    monkeypatch.setattr(ClientSession, "release", spy)
    return calls


def run_session(
    state_dir: Path, plan: DeployPlan, released: list[Any], staged: bytes | None = None
) -> Outcome:
    """One deploy session against a real sim Keep, the host being this test:
    ``staged`` is what the host stages for the Keep (possibly swapped)."""
    handle = start_keep("sim", state_dir, psp=lambda m: serve_in_thread(state_dir, m))
    out = bytearray()
    try:
        if staged is not None:
            assert handle.scratch is not None
            (handle.scratch / STAGED_NAME).write_bytes(staged)
        trust = TrustConfig(sim_root=chip.sim_root(state_dir), policy=development_policy(handle.measurement))
        hello = send_hello(handle.conn)
        try:
            result = deploy(handle.conn, plan, trust, lambda fd, data: out.extend(data), hello=hello)
            error: Exception | None = None
        except (VerificationFailed, WorkloadRejected) as exc:
            result, error = None, exc
    finally:
        handle.close()
        scratch_gone = handle.scratch is None or not handle.scratch.exists()
    assert scratch_gone
    return Outcome(result, error, bytes(out), list(released), handle.log_path.read_bytes())


def plan_for(package: bytes | None, digest: bytes, canary: bytes, **kwargs: Any) -> DeployPlan:
    return DeployPlan(
        package=package,
        digest=digest,
        config=Config(args=("/secrets/token",), limits=Limits(timeout_ms=20_000)),
        secrets=(("token", canary),),
        **kwargs,
    )


def sha_line(data: bytes) -> bytes:
    return f"sha256={hashlib.sha256(data).hexdigest()}".encode()


# ------------------------------------------------------------------ end to end (CLI)


def test_signed_package_deploys_with_attested_identity(
    stockade, state_dir: Path, tmp_path: Path, author, canary
) -> None:
    pkg = tmp_path / "wc.stockade"
    pkg.write_bytes(sign(make_package(WORDCOUNT, "wordcount", ("/secrets/token",), ("token",)), author))
    pub = tmp_path / "author.pub"
    pub.write_bytes(
        author.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    token = tmp_path / "token"
    token.write_bytes(canary)
    proc = stockade(
        "run", "--allow-sim", "--json", "--signer", str(pub), "--secret", f"token=@{token}", str(pkg)
    )
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    ident = doc["workload"]
    assert ident["package"] == "wordcount 1.0.0"
    assert ident["package_digest"] == digest_of(pkg.read_bytes()).hex()
    assert [e["kind"] for e in ident["events"]] == ["runtime", "package", "signer", "entry", "config"]
    assert ident["signers"] == [
        {"role": "author", "kid": hashlib.sha256(raw_public_key(author.public_key())).hexdigest()}
    ]
    # The register in the document is what replaying the events gives.
    events = [Event(e["kind"], e["name"], bytes.fromhex(e["digest"])) for e in ident["events"]]
    assert eventlog.replay(events).hex() == ident["register"]
    # The secret reached the workload (it printed its hash) and nothing else.
    assert sha_line(canary) in doc["stdout"].encode()
    assert canary not in proc.stderr
    for file in state_dir.rglob("*"):
        if file.is_file():
            assert canary not in file.read_bytes(), f"secret found in {file}"


def test_cli_refuses_a_package_without_the_trusted_signature(stockade, tmp_path: Path, author) -> None:
    pkg = tmp_path / "hello.stockade"
    pkg.write_bytes(make_package(HELLO, "hello"))  # unsigned
    pub = tmp_path / "author.pub"
    pub.write_bytes(
        author.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    proc = stockade("run", "--allow-sim", "--signer", str(pub), str(pkg))
    assert proc.returncode == 110
    assert b"0 valid signature(s) by trusted keys, 1 required" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_cli_trusted_boot_refuses_another_digest(stockade, tmp_path: Path) -> None:
    pkg = tmp_path / "hello.stockade"
    pkg.write_bytes(make_package(HELLO, "hello"))
    proc = stockade("run", "--allow-sim", "--expect-digest", "ab" * 32, str(pkg))
    assert proc.returncode == 117
    assert b"which is not among the --expect-digest values" in proc.stderr
    good = stockade(
        "run", "--allow-sim", "-q", "--expect-digest", digest_of(pkg.read_bytes()).hex(), str(pkg)
    )
    assert good.returncode == 0, good.stderr.decode()
    assert good.stdout.startswith(b"Hello")


def test_cli_missing_required_secret_is_refused_before_any_keep_work(stockade, tmp_path: Path) -> None:
    pkg = tmp_path / "wc.stockade"
    pkg.write_bytes(make_package(WORDCOUNT, "wordcount", secrets_=("token",)))
    proc = stockade("run", "--allow-sim", str(pkg))
    assert proc.returncode == 117
    assert b"needs secret(s) token" in proc.stderr


def test_cli_garbage_is_neither_module_nor_package(stockade, tmp_path: Path) -> None:
    bad = tmp_path / "x.stockade"
    bad.write_bytes(b"\x00\x01garbage")
    proc = stockade("run", "--allow-sim", str(bad))
    assert proc.returncode == 117
    assert b"is not a WebAssembly module (no \\0asm magic number) nor a valid stockade package" in proc.stderr
    assert b"Traceback" not in proc.stderr


# ------------------------------------------------------------- refused inside the Keep


def test_keep_trusted_boot_refuses_other_package(state_dir: Path, released, canary) -> None:
    pinned = make_package(HELLO, "pinned")
    other = make_package(WORDCOUNT, "other")
    o = run_session(
        state_dir,
        plan_for(other, digest_of(other), canary, expect=Expect(digests=(digest_of(pinned),))),
        released,
    )
    assert isinstance(o.error, WorkloadRejected)
    assert "trusted boot" in str(o.error) and "not among the 1 pinned digest(s)" in str(o.error)
    assert o.released == []
    assert canary not in o.keep_log


def test_keep_refuses_signature_by_untrusted_key(state_dir: Path, released, canary, author) -> None:
    stranger = Ed25519PrivateKey.generate()
    pkg = sign(make_package(WORDCOUNT, "wc"), stranger)
    expect = Expect(signers=(raw_public_key(author.public_key()),), min_signatures=1)
    o = run_session(state_dir, plan_for(pkg, digest_of(pkg), canary, expect=expect), released)
    assert isinstance(o.error, VerificationFailed)
    assert "0 valid signature(s) by trusted keys, 1 required" in str(o.error)
    assert "1 signature(s) by untrusted keys ignored" in str(o.error)
    assert o.released == []


def test_keep_refuses_bad_signature_by_trusted_key(state_dir: Path, released, canary, author) -> None:
    pkg = sign(make_package(WORDCOUNT, "wc"), author)
    doc = cbor2.loads(pkg)
    sig = bytearray(doc["signatures"][0]["sig"])
    sig[0] ^= 1
    doc["signatures"][0]["sig"] = bytes(sig)
    forged = cbor2.dumps(doc, canonical=True)
    expect = Expect(signers=(raw_public_key(author.public_key()),), min_signatures=1)
    o = run_session(state_dir, plan_for(forged, digest_of(forged), canary, expect=expect), released)
    assert isinstance(o.error, VerificationFailed)
    assert "does not verify" in str(o.error)
    assert o.released == []


def _mutations(pkg: bytes) -> Iterator[tuple[str, bytes]]:
    doc = cbor2.loads(pkg)
    yield "trailing byte", pkg + b"\x00"
    dropped = dict(doc)
    dropped["files"] = {}
    yield "dropped file", cbor2.dumps(dropped, canonical=True)
    other_entry = {**doc, "manifest": {**doc["manifest"], "entry": "other.wasm"}}
    yield "manifest names another entry", cbor2.dumps(other_entry, canonical=True)
    extra = {**doc, "files": {**doc["files"], "zz.txt": b"x"}}
    yield "added file", cbor2.dumps(extra, canonical=True)
    yield (
        "non-canonical",
        cbor2.dumps(doc, canonical=False)[:-1] + cbor2.dumps(doc, canonical=False)[-1:] + b"",
    )


@pytest.mark.parametrize(
    "case", ["trailing byte", "dropped file", "manifest names another entry", "added file"]
)
def test_keep_refuses_malformed_package(state_dir: Path, released, canary, case: str) -> None:
    pkg = make_package(WORDCOUNT, "wc")
    bad = dict(_mutations(pkg))[case]
    o = run_session(state_dir, plan_for(bad, digest_of(pkg), canary), released)
    assert isinstance(o.error, WorkloadRejected), o.error
    assert "package sent by the client" in str(o.error)
    assert o.released == []


def test_flipped_content_byte_is_caught_by_the_identity(state_dir: Path, released, canary) -> None:
    """A flip inside the module's bytes keeps the package well-formed: the
    Keep loads it (no pin), and the attested digest tells the client."""
    pkg = make_package(WORDCOUNT, "wc")
    flipped = bytearray(pkg)
    flipped[-100] ^= 0x01
    assert Package.from_bytes(bytes(flipped)).digest != digest_of(pkg)
    o = run_session(state_dir, plan_for(bytes(flipped), digest_of(pkg), canary), released)
    assert isinstance(o.error, VerificationFailed)
    assert "not the expected" in str(o.error) and "no secret was released" in str(o.error)
    assert o.released == []


# ---------------------------------------------------------------- hostile host staging


def test_staged_package_runs_when_it_is_the_expected_one(state_dir: Path, released, canary) -> None:
    pkg = make_package(WORDCOUNT, "wc", ("/secrets/token",), ("token",))
    o = run_session(state_dir, plan_for(None, digest_of(pkg), canary), released, staged=pkg)
    assert o.error is None and o.result is not None
    assert o.result.exit_code == 0
    assert sha_line(canary) in o.stdout
    assert len(o.released) == 1
    assert o.result.identity.package_digest == digest_of(pkg)


def test_hostile_host_swaps_staged_package_measured_boot(state_dir: Path, released, canary) -> None:
    """The host stages another (well-formed) package; the Keep has no pin, so
    it loads and measures it; the attested identity shows the swap and the
    client refuses: the secret never leaves."""
    wanted = make_package(WORDCOUNT, "wc")
    swapped = make_package(HELLO, "evil")
    o = run_session(state_dir, plan_for(None, digest_of(wanted), canary), released, staged=swapped)
    assert isinstance(o.error, VerificationFailed)
    assert f"loaded package digest {digest_of(swapped).hex()}" in str(o.error)
    assert o.released == []
    assert canary not in o.keep_log and canary not in o.stdout


def test_hostile_host_swaps_staged_package_trusted_boot(state_dir: Path, released, canary) -> None:
    wanted = make_package(WORDCOUNT, "wc")
    swapped = make_package(HELLO, "evil")
    plan = plan_for(None, digest_of(wanted), canary, expect=Expect(digests=(digest_of(wanted),)))
    o = run_session(state_dir, plan, released, staged=swapped)
    assert isinstance(o.error, WorkloadRejected)
    assert "staged by the host" in str(o.error) and "trusted boot" in str(o.error)
    assert o.released == []


def test_staged_but_nothing_staged(state_dir: Path, released, canary) -> None:
    o = run_session(state_dir, plan_for(None, b"\x00" * 32, canary), released)
    assert isinstance(o.error, WorkloadRejected)
    assert "the host staged none" in str(o.error)


# --------------------------------------------------------- appraise_identity, unit level


@dataclasses.dataclass
class Fixture:
    first: Appraisal
    key: Any
    trust: TrustConfig
    attester: SimAttester
    config: Config
    package_digest: bytes


@pytest.fixture(scope="module")
def fx(state_dir: Path) -> Iterator[Fixture]:
    measurement = keep_measurement()
    sock: socket.socket = serve_in_thread(state_dir, measurement)
    attester = SimAttester(sock)
    key = keep_identity.new_key()
    nonce = secrets.token_bytes(32)
    bundle = attester.evidence(report_data_for(nonce, keep_identity.spki_der(key)))
    cert = keep_identity.certificate(key, bundle)
    trust = TrustConfig(sim_root=chip.sim_root(state_dir), policy=development_policy(measurement))
    der = cert.public_bytes(serialization.Encoding.DER)
    first = appraise(der, nonce, trust)
    yield Fixture(first, key, trust, attester, Config(), hashlib.sha256(b"package").digest())
    sock.close()


def events_for(
    fx: Fixture, package_digest: bytes | None = None, signers: tuple[bytes, ...] = ()
) -> list[Event]:
    ev = [
        Event("runtime", "rt", hashlib.sha256(b"rt").digest()),
        Event("package", "p 1", package_digest or fx.package_digest),
        *(Event("signer", "author", hashlib.sha256(raw).digest()) for raw in signers),
        Event("entry", "app.wasm", hashlib.sha256(b"wasm").digest()),
        Event("config", "deploy", fx.config.digest()),
    ]
    return ev


def identity_msg(fx: Fixture, nonce: bytes, events: list[Event], register: bytes | None = None) -> Identity:
    reg = register if register is not None else eventlog.replay(events)
    bundle = fx.attester.evidence(identity_report_data(nonce, fx.first.tls_spki, reg))
    return Identity(evidence=bundle.to_cbor(), events=tuple(events))


def check(fx: Fixture, msg: Identity, nonce: bytes, expect: Expect | None = None) -> Any:
    return appraise_identity(
        msg, fx.first, nonce, fx.package_digest, fx.config.digest(), expect or Expect(), fx.trust
    )


def test_identity_accepts_the_honest_log(fx: Fixture) -> None:
    nonce = secrets.token_bytes(32)
    ident = check(fx, identity_msg(fx, nonce, events_for(fx)), nonce)
    assert ident.package_digest == fx.package_digest
    assert ident.register == eventlog.replay(events_for(fx))


@pytest.mark.parametrize("edit", ["remove", "reorder", "change", "add"])
def test_identity_refuses_an_altered_log(fx: Fixture, edit: str) -> None:
    nonce = secrets.token_bytes(32)
    honest = events_for(fx)
    msg = identity_msg(fx, nonce, honest)
    altered = list(honest)
    if edit == "remove":
        del altered[2]
    elif edit == "reorder":
        altered[2], altered[3] = altered[3], altered[2]
    elif edit == "change":
        altered[2] = Event("entry", "app.wasm", hashlib.sha256(b"other").digest())
    else:
        altered.insert(3, Event("file", "x", bytes(32)))
    with pytest.raises(VerificationFailed, match="register of the received event log"):
        check(fx, dataclasses.replace(msg, events=tuple(altered)), nonce)


def test_identity_refuses_a_stale_nonce(fx: Fixture) -> None:
    old = secrets.token_bytes(32)
    msg = identity_msg(fx, old, events_for(fx))
    with pytest.raises(VerificationFailed, match="does not bind this load's nonce"):
        check(fx, msg, secrets.token_bytes(32))


def test_identity_refuses_another_tls_key(fx: Fixture) -> None:
    nonce = secrets.token_bytes(32)
    other = keep_identity.spki_der(keep_identity.new_key())
    events = events_for(fx)
    bundle = fx.attester.evidence(identity_report_data(nonce, other, eventlog.replay(events)))
    with pytest.raises(VerificationFailed, match="TLS key"):
        check(fx, Identity(evidence=bundle.to_cbor(), events=tuple(events)), nonce)


def test_identity_refuses_another_package(fx: Fixture) -> None:
    nonce = secrets.token_bytes(32)
    msg = identity_msg(fx, nonce, events_for(fx, package_digest=hashlib.sha256(b"evil").digest()))
    with pytest.raises(VerificationFailed, match="no secret was released"):
        check(fx, msg, nonce)


def test_identity_refuses_another_config(fx: Fixture) -> None:
    nonce = secrets.token_bytes(32)
    events = events_for(fx)
    events[-1] = Event("config", "deploy", hashlib.sha256(b"other config").digest())
    with pytest.raises(VerificationFailed, match="another deploy configuration"):
        check(fx, identity_msg(fx, nonce, events), nonce)


@pytest.mark.parametrize("shape", ["no-runtime", "two-packages", "no-entry", "config-not-last"])
def test_identity_refuses_a_malformed_log(fx: Fixture, shape: str) -> None:
    nonce = secrets.token_bytes(32)
    events = events_for(fx)
    if shape == "no-runtime":
        events = events[1:]
    elif shape == "two-packages":
        events.insert(2, events[1])
    elif shape == "no-entry":
        events = [e for e in events if e.kind != "entry"]
    else:
        events.append(Event("file", "late", bytes(32)))
    with pytest.raises(VerificationFailed, match="event log"):
        check(fx, identity_msg(fx, nonce, events), nonce)


def test_identity_requires_the_signers_the_client_asked_for(fx: Fixture, author) -> None:
    nonce = secrets.token_bytes(32)
    raw = raw_public_key(author.public_key())
    expect = Expect(signers=(raw,), min_signatures=1)
    with pytest.raises(VerificationFailed, match="0 signature"):
        check(fx, identity_msg(fx, nonce, events_for(fx)), nonce, expect)
    nonce2 = secrets.token_bytes(32)
    ok = check(fx, identity_msg(fx, nonce2, events_for(fx, signers=(raw,))), nonce2, expect)
    assert ok.signers == (("author", hashlib.sha256(raw).hexdigest()),)


def test_identity_refuses_another_launch_measurement(fx: Fixture, state_dir: Path) -> None:
    sock = serve_in_thread(state_dir, b"\x11" * 48)
    try:
        nonce = secrets.token_bytes(32)
        events = events_for(fx)
        bundle = SimAttester(sock).evidence(
            identity_report_data(nonce, fx.first.tls_spki, eventlog.replay(events))
        )
    finally:
        sock.close()
    with pytest.raises(VerificationFailed, match="launch measurement differs"):
        check(fx, Identity(evidence=bundle.to_cbor(), events=tuple(events)), nonce)


# ------------------------------------------------------------- policy [workload] table


def _policy(tmp_path: Path, workload: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(f'version = 1\nname = "pkg"\nplatforms = ["sim"]\n\n[workload]\n{workload}\n')
    return path


def test_policy_workload_signers_enforced(stockade, tmp_path: Path, author) -> None:
    raw = raw_public_key(author.public_key()).hex()
    policy = _policy(tmp_path, f'signers = ["{raw}"]')
    unsigned = tmp_path / "u.stockade"
    unsigned.write_bytes(make_package(HELLO, "hello"))
    signed = tmp_path / "s.stockade"
    signed.write_bytes(sign(unsigned.read_bytes(), author))
    refused = stockade("run", "--allow-sim", "--policy", str(policy), str(unsigned))
    assert refused.returncode == 110, refused.stderr.decode()
    accepted = stockade("run", "--allow-sim", "--policy", str(policy), "--json", str(signed))
    assert accepted.returncode == 0, accepted.stderr.decode()
    assert json.loads(accepted.stdout)["workload"]["signers"][0]["role"] == "author"
    both = stockade("run", "--allow-sim", "--policy", str(policy), "--expect-digest", "00" * 32, str(signed))
    assert both.returncode == 2
    assert b"put the signers and digests in the policy file" in both.stderr


def test_policy_workload_digest_pins(stockade, tmp_path: Path) -> None:
    pkg = tmp_path / "p.stockade"
    pkg.write_bytes(make_package(HELLO, "hello"))
    policy = _policy(tmp_path, f'digests = ["{"ab" * 32}"]')
    proc = stockade("run", "--allow-sim", "--policy", str(policy), str(pkg))
    assert proc.returncode == 117
    assert b"is not among the [workload] digests of policy" in proc.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('signer = ["00"]', "unknown key (did you mean 'signers'?)"),
        ('signers = ["00"]', "expected 32 bytes"),
        ("min_signatures = 1", "min_signatures without signers"),
        (f'signers = ["{"11" * 32}"]\nmin_signatures = 2', "out of range"),
        ("", "empty table"),
        ('digests = ["zz"]', "not hex"),
    ],
)
def test_policy_workload_table_errors(tmp_path: Path, body: str, message: str) -> None:
    from stockade.policy import PolicyError, load_policy

    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(_policy(tmp_path, body))


# ------------------------------------------------------------------ tampering, CLI


@pytest.mark.parametrize(
    "case", ["trailing byte", "dropped file", "manifest names another entry", "added file"]
)
def test_cli_refuses_tampered_package(stockade, tmp_path: Path, case: str) -> None:
    bad = tmp_path / "bad.stockade"
    bad.write_bytes(dict(_mutations(make_package(WORDCOUNT, "wc")))[case])
    proc = stockade("run", "--allow-sim", str(bad))
    assert proc.returncode == 117, proc.stderr.decode()
    line = proc.stderr.decode().strip().splitlines()[-1]
    assert line.startswith(f"stockade: workload rejected: {bad}: package:"), line
    assert "Traceback" not in proc.stderr.decode()


def test_cli_flipped_module_byte_breaks_the_signature(stockade, tmp_path: Path, author) -> None:
    data = bytearray(sign(make_package(WORDCOUNT, "wc"), author))
    data[len(data) // 2] ^= 0x01  # inside the module bytes: still a well-formed package
    bad = tmp_path / "bad.stockade"
    bad.write_bytes(bytes(data))
    pub = tmp_path / "author.pub"
    pub.write_bytes(
        author.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    proc = stockade("run", "--allow-sim", "--signer", str(pub), str(bad))
    assert proc.returncode == 110
    assert b"does not verify over role author and digest" in proc.stderr


# --- the signer role in the event log is signed (issue 13 item 7) -------------------------


def _load_with_signer(data: bytes, key: Ed25519PrivateKey) -> Any:
    from stockade.keep.loading import load
    from stockade.wire.messages import Load

    expect = Expect(signers=(raw_public_key(key.public_key()),), min_signatures=1)
    return load(Load(data, Config(), bytes(32), expect), None)


@pytest.mark.parametrize("role", ["author", "reviewer"])
def test_the_keep_logs_the_signed_role_and_refuses_a_changed_one(role: str) -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign(make_package(HELLO, "hello"), key, role)
    loaded = _load_with_signer(signed, key)
    (signer,) = [e for e in loaded.log.events if e.kind == "signer"]
    assert (signer.name, signer.digest) == (role, hashlib.sha256(raw_public_key(key.public_key())).digest())
    top = cbor2.loads(signed)
    top["signatures"][0]["role"] = "reviewer" if role == "author" else "author"
    tampered = bytes(cbor2.dumps(top, canonical=True))
    with pytest.raises(VerificationFailed, match="does not verify over role"):
        _load_with_signer(tampered, key)
