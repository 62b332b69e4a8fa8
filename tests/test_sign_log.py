"""Package signatures in the steward's transparency log (issue 17, item 2,
second paragraph): ``POST /v1/log/package-signature``, ``stockade package
sign --log``, the ``log`` field beside a signature, ``[workload]
require_log`` enforced by the deploying client, and ``log verify
--steward`` listing the signature entries.

A real steward on loopback (tests/steward_support.py: the app under
uvicorn with TLS under the steward CA, in a thread of this process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import EXAMPLES, run_options
from steward_support import Running, policy, run_steward
from stockade.cli import main
from stockade.errors import WorkloadRejected
from stockade.evidence.sim import chip as simchip
from stockade.package import Package, build
from stockade.package.format import SignatureLog
from stockade.package.logproof import UnloggedSignatures, signature_entry, verify_logged
from stockade.package.signing import load_public_key, raw_public_key
from stockade.policy import loads_policy
from stockade.policy.model import PolicyError
from stockade.steward import api
from stockade.steward.appraise import StewardTrust
from stockade.steward.ca import create_ca
from stockade.steward.request import Connection, StewardUnreachable, fetch_log_key
from stockade.steward.signatures import PATH, SignatureNotLogged, log_signature
from stockade.translog import (
    CertificateEntry,
    LogKey,
    PackageSignatureEntry,
    TransparencyLog,
    encode_entry,
)

HELLO = EXAMPLES / "hello" / "hello.wasm"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trust(state_dir: Path) -> StewardTrust:
    return StewardTrust(policy=policy(), sim_root=simchip.sim_root(state_dir))


@pytest.fixture(scope="module")
def steward(tmp_path_factory: pytest.TempPathFactory, trust: StewardTrust) -> Iterator[Running]:
    sdir = tmp_path_factory.mktemp("sign-log") / "state"
    with create_ca(sdir, "sign-log test CA") as ca, run_steward(ca, sdir, trust) as running:
        yield running


@pytest.fixture(scope="module")
def ca_pem(steward: Running, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(steward.ca.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def log_key(steward: Running) -> LogKey:
    return fetch_log_key(steward.url, ca=steward.ca)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("author", "reviewer"):
        result = _cli("key", "generate", "--out", str(d / f"{name}.key"))
        assert result.exit_code == 0, result.output
        out[name] = d / f"{name}.key"
    return out


def _package(root: Path, name: str = "hello") -> Path:
    """An unsigned package of the hello example (runs in a sim Keep)."""
    d = root / f"src-{name}"
    d.mkdir()
    shutil.copyfile(HELLO, d / "hello.wasm")
    (d / "Stockade.toml").write_text(f'name = "{name}"\nversion = "1.0"\nentry = "hello.wasm"\n')
    out = root / f"{name}.stockade"
    out.write_bytes(build(d))
    return out


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


def _sign(pkg: Path, key: Path, *extra: str, role: str = "author") -> Any:
    result = _cli("package", "sign", str(pkg), "--key", str(key), "--role", role, *extra)
    return result


def _sign_logged(pkg: Path, key: Path, steward: Running, ca_pem: Path, role: str = "author") -> Any:
    result = _sign(pkg, key, "--log", steward.url, "--steward-ca", str(ca_pem), role=role)
    assert result.exit_code == 0, result.output
    return result


def _raw(key: Path) -> bytes:
    return raw_public_key(load_public_key(key.with_name(key.name + ".pub")))


def _policy(signers: list[bytes], log_ids: list[bytes], minimum: int = 1) -> Any:
    text = (
        'version = 1\nname = "logged"\nplatforms = ["sim"]\n[workload]\n'
        f"signers = [{', '.join(repr(s.hex()) for s in signers)}]\n"
        f"min_signatures = {minimum}\nrequire_log = true\n"
        f"log_keys = [{', '.join(repr(i.hex()) for i in log_ids)}]\n"
    ).replace("'", '"')
    return loads_policy(text, "<require_log test policy>")


def _expect(pkg: Path, pol: Any) -> Any:
    """The client's check before a deploy (stockade.client.plan.expectations)."""
    from stockade.client.plan import expectations, prepare

    opts = run_options(pkg, allow_sim=False)
    return expectations(opts, prepare(opts), pol)


def _with_log(data: bytes, kid: str, log: SignatureLog | None) -> bytes:
    pkg = Package.from_bytes(data)
    sigs = tuple(dataclasses.replace(s, log=log) if s.kid == kid else s for s in pkg.signatures)
    return dataclasses.replace(pkg, signatures=sigs).to_bytes()


# --------------------------------------------------------------------------- sign --log


def test_sign_log_stores_a_proof_that_verifies(
    steward: Running, ca_pem: Path, log_key: LogKey, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    unsigned = Package.from_bytes(pkg.read_bytes())
    result = _sign(pkg, keys["author"], "--log", steward.url, "--steward-ca", str(ca_pem), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["log"]["log_id"] == log_key.log_id.hex()
    signed = Package.from_bytes(pkg.read_bytes())
    assert signed.digest == unsigned.digest  # the proof is outside the content digest
    (sig,) = signed.signatures
    assert sig.log is not None and sig.log.index == doc["log"]["index"]
    assert sig.log.key == log_key.spki
    included = verify_logged(signed.digest, _raw(keys["author"]), sig, [log_key.log_id])
    assert included.index == sig.log.index
    # The log holds exactly that statement.
    entry = steward.steward.log.entry(sig.log.index)
    assert entry == encode_entry(signature_entry(signed.digest, _raw(keys["author"]), sig))

    # inspect shows it (unverified), verify --log-key checks it.
    shown = json.loads(_cli("package", "inspect", str(pkg), "--json").output)
    assert shown["signatures"][0]["log"]["index"] == sig.log.index
    assert shown["signatures"][0]["log"]["log_id"] == log_key.log_id.hex()
    text = " ".join(_cli("package", "inspect", str(pkg)).output.split())  # rich wraps lines
    assert f"entry {sig.log.index} of log {log_key.log_id.hex()}" in text
    pub = str(keys["author"]) + ".pub"
    result = _cli(
        "package", "verify", str(pkg), "--signer", pub, "--log-key", log_key.log_id.hex(), "--require-log"
    )
    assert result.exit_code == 0, result.output
    assert "1 of 1 required trusted logged signature(s)" in result.output
    assert f"logged: entry {sig.log.index} of log {log_key.log_id.hex()}" in result.output


def test_the_same_statement_is_logged_once(
    steward: Running, ca_pem: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    _sign_logged(pkg, keys["author"], steward, ca_pem)
    first = Package.from_bytes(pkg.read_bytes()).signatures[0].log
    size = steward.steward.log.size
    _sign_logged(pkg, keys["author"], steward, ca_pem)  # Ed25519 is deterministic: the same signature
    again = Package.from_bytes(pkg.read_bytes()).signatures[0].log
    assert first is not None and again is not None
    assert again.index == first.index
    assert steward.steward.log.size == size


def test_sign_log_needs_the_steward_ca_and_writes_nothing_when_the_steward_is_unreachable(
    steward: Running, ca_pem: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    before = pkg.read_bytes()
    result = _sign(pkg, keys["author"], "--log", steward.url)
    assert result.exit_code == 2 and "go together" in result.output
    result = _sign(pkg, keys["author"], "--log", "https://127.0.0.1:1", "--steward-ca", str(ca_pem))
    assert result.exit_code == 1, result.output
    assert "the package was not written" in result.output
    assert pkg.read_bytes() == before


# --------------------------------------------------------------------------- the endpoint


def _post(running: Running, body: bytes, media: str = api.CBOR) -> tuple[int, dict[Any, Any]]:
    with Connection(running.url, running.ca) as conn:
        conn._conn.request("POST", PATH, body=body, headers={"Content-Type": media})
        r = conn._conn.getresponse()
        data = r.read()
    import cbor2

    return r.status, cbor2.loads(data)


def test_the_steward_logs_only_signatures_that_verify(steward: Running) -> None:
    key = Ed25519PrivateKey.generate()
    raw = raw_public_key(key.public_key())
    digest = hashlib.sha256(b"some package").digest()
    from stockade.package.signing import signed_bytes

    good = PackageSignatureEntry(digest, raw, "author", key.sign(signed_bytes(digest, "author")))
    size = steward.steward.log.size
    # A signature over another role, another digest, or by another key than named: 422, not logged.
    for bad in (
        dataclasses.replace(good, role="reviewer"),
        dataclasses.replace(good, package_digest=hashlib.sha256(b"other").digest()),
        dataclasses.replace(good, signer_key=raw_public_key(Ed25519PrivateKey.generate().public_key())),
    ):
        status, problem = _post(steward, encode_entry(bad))
        assert status == 422, problem
        assert "does not verify" in problem[api.PD_DETAIL]
        with pytest.raises(SignatureNotLogged, match="does not verify"):
            log_signature(steward.url, bad, ca=steward.ca)
    # A v1 signature (role unsigned) is named as such.
    from stockade.package.signing import LEGACY_V1_PREFIX

    v1 = dataclasses.replace(good, sig=key.sign(LEGACY_V1_PREFIX + digest))
    status, problem = _post(steward, encode_entry(v1))
    assert status == 422 and "v1 signature" in problem[api.PD_DETAIL]
    # Not a package-signature entry, not an entry, not CBOR, too large, wrong media type.
    status, problem = _post(steward, encode_entry(CertificateEntry(b"\x30\x00")))
    assert status == 400 and "package-signature" in problem[api.PD_DETAIL]
    status, problem = _post(steward, encode_entry(good)[:-1])
    assert status == 400 and "not a log entry" in problem[api.PD_DETAIL]
    status, problem = _post(steward, b"\x00" * 2000)
    assert status == 413
    status, problem = _post(steward, encode_entry(good), media="application/json")
    assert status == 415
    assert steward.steward.log.size == size
    # The good one is logged, with a proof that verifies.
    logged = log_signature(steward.url, good, ca=steward.ca)
    assert logged.position.index == size
    assert steward.steward.log.size == size + 1


def test_the_endpoint_is_rate_limited(tmp_path: Path, trust: StewardTrust) -> None:
    sdir = tmp_path / "state"
    key = Ed25519PrivateKey.generate()
    digest = hashlib.sha256(b"rate").digest()
    from stockade.package.signing import signed_bytes

    entry = PackageSignatureEntry(
        digest, raw_public_key(key.public_key()), "author", key.sign(signed_bytes(digest, "author"))
    )
    with create_ca(sdir, "rate CA") as ca, run_steward(ca, sdir, trust, rate=1, burst=3) as running:
        statuses = [_post(running, encode_entry(entry))[0] for _ in range(4)]
        assert statuses[:3] == [200, 200, 200]
        assert statuses[3] == 429
        with pytest.raises(StewardUnreachable, match="busy"):
            log_signature(running.url, entry, ca=running.ca)
        assert running.steward.log.size == 1


# --------------------------------------------------------------------------- require_log


def test_policy_keys_require_log() -> None:
    signer, log_id = "ab" * 32, "cd" * 32
    head = 'version = 1\nplatforms = ["sim"]\n[workload]\n'
    pol = loads_policy(head + f'signers = ["{signer}"]\nrequire_log = true\nlog_keys = ["{log_id}"]\n', "p")
    assert pol.workload is not None
    assert pol.workload.require_log and pol.workload.log_keys == (bytes.fromhex(log_id),)
    for body, message in (
        (f'signers = ["{signer}"]\nrequire_log = true\n', "require_log needs log_keys"),
        (f'signers = ["{signer}"]\nlog_keys = ["{log_id}"]\n', "log_keys without require_log"),
        (f'digests = ["{signer}"]\nrequire_log = true\nlog_keys = ["{log_id}"]\n', "without signers"),
        (f'signers = ["{signer}"]\nrequire_log = true\nlog_keys = ["abcd"]\n', "expected 32 bytes"),
        (f'signers = ["{signer}"]\nrequire_log = "yes"\nlog_keys = ["{log_id}"]\n', "true or false"),
    ):
        with pytest.raises(PolicyError, match=message):
            loads_policy(head + body, "p")


def test_require_log_counts_logged_signatures_only(
    steward: Running, ca_pem: Path, log_key: LogKey, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    _sign_logged(pkg, keys["author"], steward, ca_pem)
    assert _sign(pkg, keys["reviewer"], role="reviewer").exit_code == 0  # outside the log
    author, reviewer = _raw(keys["author"]), _raw(keys["reviewer"])
    expect, notes = _expect(pkg, _policy([author, reviewer], [log_key.log_id], minimum=1))
    # Only the logged signer goes to the Keep as trusted: it verifies and
    # measures exactly the signatures that counted.
    assert expect.signers == (author,)
    assert expect.min_signatures == 1
    assert any("logged" in n and "require_log" in n for n in notes)
    with pytest.raises(UnloggedSignatures) as info:
        _expect(pkg, _policy([author, reviewer], [log_key.log_id], minimum=2))
    err = info.value
    assert err.exit_code == 112
    assert "workload.require_log" in err.detail and "actual 1" in err.detail
    assert "reviewer" in err.detail and "no inclusion proof" in err.detail
    assert "checked by this client before deploying" in err.detail


def test_a_signature_made_outside_the_log_is_refused(
    log_key: LogKey, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    assert _sign(pkg, keys["author"]).exit_code == 0
    with pytest.raises(UnloggedSignatures, match="no inclusion proof"):
        _expect(pkg, _policy([_raw(keys["author"])], [log_key.log_id]))


def test_a_proof_for_another_package_or_key_is_refused(
    steward: Running, ca_pem: Path, log_key: LogKey, keys: dict[str, Path], tmp_path: Path
) -> None:
    a, b = _package(tmp_path, "a"), _package(tmp_path, "b")
    # b differs from a in its manifest name: another digest.
    assert Package.from_bytes(a.read_bytes()).digest != Package.from_bytes(b.read_bytes()).digest
    _sign_logged(a, keys["author"], steward, ca_pem)
    assert _sign(b, keys["author"]).exit_code == 0
    proof_a = Package.from_bytes(a.read_bytes()).signatures[0].log
    kid = Package.from_bytes(b.read_bytes()).signatures[0].kid
    b.write_bytes(_with_log(b.read_bytes(), kid, proof_a))
    pol = _policy([_raw(keys["author"])], [log_key.log_id])
    with pytest.raises(UnloggedSignatures, match="inclusion proof does not hold for this package"):
        _expect(b, pol)
    # The same proof beside another key's signature of package a.
    assert _sign(a, keys["reviewer"], role="reviewer").exit_code == 0
    rkid = next(s.kid for s in Package.from_bytes(a.read_bytes()).signatures if s.role == "reviewer")
    a.write_bytes(_with_log(a.read_bytes(), rkid, proof_a))
    with pytest.raises(UnloggedSignatures, match="inclusion proof does not hold for this package"):
        _expect(a, _policy([_raw(keys["reviewer"])], [log_key.log_id]))
    # The same key's signature of package a, as another role than the one logged.
    c = _package(tmp_path, "c")
    _sign_logged(c, keys["author"], steward, ca_pem)
    proof_c = Package.from_bytes(c.read_bytes()).signatures[0].log
    assert _sign(c, keys["author"], role="reviewer").exit_code == 0
    c.write_bytes(_with_log(c.read_bytes(), kid, proof_c))
    assert Package.from_bytes(c.read_bytes()).signatures[0].role == "reviewer"
    with pytest.raises(UnloggedSignatures, match="inclusion proof does not hold for this package"):
        _expect(c, pol)


def test_a_tampered_proof_is_refused(
    steward: Running, ca_pem: Path, log_key: LogKey, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    _sign_logged(pkg, keys["author"], steward, ca_pem)
    good = pkg.read_bytes()
    sig = Package.from_bytes(good).signatures[0]
    assert sig.log is not None
    pol = _policy([_raw(keys["author"])], [log_key.log_id])
    _expect(pkg, pol)  # accepted as stored
    flip = bytes([sig.log.tree_head[-1] ^ 1])
    tampered = {
        "index": dataclasses.replace(sig.log, index=sig.log.index + 1),
        "tree head signature": dataclasses.replace(sig.log, tree_head=sig.log.tree_head[:-1] + flip),
    }
    if sig.log.inclusion:
        first = sig.log.inclusion[0]
        tampered["proof hash"] = dataclasses.replace(
            sig.log, inclusion=(bytes([first[0] ^ 1]) + first[1:], *sig.log.inclusion[1:])
        )
    tampered["proof length"] = dataclasses.replace(sig.log, inclusion=(*sig.log.inclusion, bytes(32)))
    for what, log in tampered.items():
        pkg.write_bytes(_with_log(good, sig.kid, log))
        with pytest.raises(UnloggedSignatures) as info:
            _expect(pkg, pol)
        assert "not counted" in info.value.detail, what


def test_a_tree_head_signed_by_an_untrusted_key_is_refused(
    steward: Running, ca_pem: Path, log_key: LogKey, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    assert _sign(pkg, keys["author"]).exit_code == 0
    data = pkg.read_bytes()
    parsed = Package.from_bytes(data)
    sig = parsed.signatures[0]
    entry = signature_entry(parsed.digest, _raw(keys["author"]), sig)
    # A log of someone else's: the entry is really in it, and its proof holds under its own key.
    with TransparencyLog.create(tmp_path / "rogue") as rogue:
        index, head = rogue.append([entry])
        proof = rogue.inclusion_proof(index)
        rogue_key = rogue.key
    honest = SignatureLog(index, head, proof.path, rogue_key.spki)
    pol = _policy([_raw(keys["author"])], [log_key.log_id])
    pkg.write_bytes(_with_log(data, sig.kid, honest))
    with pytest.raises(UnloggedSignatures, match="not one of the pinned log keys"):
        _expect(pkg, pol)
    # It names the trusted log's key but the tree head is signed by another one.
    pkg.write_bytes(_with_log(data, sig.kid, dataclasses.replace(honest, key=log_key.spki)))
    with pytest.raises(UnloggedSignatures, match="not one of the 1 trusted log key"):
        _expect(pkg, pol)
    # The rogue log is accepted only by a policy that pins it.
    pkg.write_bytes(_with_log(data, sig.kid, honest))
    expect, _ = _expect(pkg, _policy([_raw(keys["author"])], [rogue_key.log_id]))
    assert expect.signers == (_raw(keys["author"]),)


def test_package_verify_require_log_exit_112_and_reasons(
    log_key: LogKey, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    assert _sign(pkg, keys["author"]).exit_code == 0
    pub = str(keys["author"]) + ".pub"
    result = _cli("package", "verify", str(pkg), "--signer", pub, "--require-log")
    assert result.exit_code == 2 and "--log-key" in result.output
    result = _cli(
        "package", "verify", str(pkg), "--signer", pub, "--log-key", log_key.log_id.hex(), "--require-log"
    )
    assert result.exit_code == 112, result.output
    assert "--require-log" in result.output and "no inclusion proof" in result.output
    # Without --require-log the proofs are shown, not required.
    result = _cli("package", "verify", str(pkg), "--signer", pub, "--log-key", log_key.log_id.hex())
    assert result.exit_code == 0, result.output
    assert "not logged: no inclusion proof" in result.output


def test_a_malformed_log_field_is_a_malformed_package(tmp_path: Path, keys: dict[str, Path]) -> None:
    import cbor2

    pkg = _package(tmp_path)
    assert _sign(pkg, keys["author"]).exit_code == 0
    good = SignatureLog(3, b"head", (bytes(32),), b"key")
    data = _with_log(pkg.read_bytes(), Package.from_bytes(pkg.read_bytes()).signatures[0].kid, good)
    assert Package.from_bytes(data).signatures[0].log == good
    import pycddl

    doc = (Path(__file__).resolve().parent.parent / "docs" / "package.md").read_text()
    schema = pycddl.Schema(doc.split("```cddl\n", 1)[1].split("```", 1)[0])
    schema.validate_cbor(data)  # the documented CDDL says the same as the parser
    top = cbor2.loads(data)
    for mutate, message in (
        (lambda log: log.update(extra=1), "exactly the keys"),
        (lambda log: log.update(index=-1), "unsigned integer"),
        (lambda log: log.update(inclusion=[b"short"]), "32-byte hashes"),
        (lambda log: log.update(inclusion=[bytes(32)] * 65), "at most 64"),
        (lambda log: log.update(key=b""), "key must be"),
        (lambda log: log.update(**{"tree-head": bytes(2000)}), "tree-head must be"),
    ):
        copy = cbor2.loads(data)
        mutate(copy["signatures"][0]["log"])
        with pytest.raises(WorkloadRejected, match=message):
            Package.from_bytes(cbor2.dumps(copy, canonical=True))
    assert top["signatures"][0]["log"]["index"] == 3


# --------------------------------------------------------------------------- log verify --steward


def test_log_verify_steward_shows_the_signature_entries(
    tmp_path: Path, trust: StewardTrust, keys: dict[str, Path]
) -> None:
    from cryptography.hazmat.primitives import serialization

    sdir = tmp_path / "state"
    with create_ca(sdir, "audit CA") as ca, run_steward(ca, sdir, trust) as running:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
        pkg = _package(tmp_path)
        _sign_logged(pkg, keys["author"], running, ca_file)
        digest = Package.from_bytes(pkg.read_bytes()).digest
        kid = hashlib.sha256(_raw(keys["author"])).hexdigest()
        result = _cli("log", "verify", "--steward", running.url, "--steward-ca", str(ca_file))
        assert result.exit_code == 0, result.output
        assert "1 package signatures" in result.output
        assert f"entry 0: package sha256:{digest.hex()} signed as author by key {kid}" in result.output
        doc = json.loads(
            _cli("log", "verify", "--steward", running.url, "--steward-ca", str(ca_file), "--json").output
        )
        assert doc["package_signatures"] == [
            {"index": 0, "package_digest": digest.hex(), "kid": kid, "role": "author"}
        ]
        # An entry whose signature does not verify (appended behind the
        # endpoint's back, as a rogue operator could) is reported.
        bad = PackageSignatureEntry(digest, _raw(keys["author"]), "reviewer", bytes(64))
        with running.steward.lock:
            running.steward.log.append([bad])
        result = _cli("log", "verify", "--steward", running.url, "--steward-ca", str(ca_file))
        assert result.exit_code == 110, result.output
        assert "log entry 1: a package signature that does not verify" in result.output


# --------------------------------------------------------------------------- end to end


def test_run_with_require_log_deploys_a_logged_package_and_refuses_an_unlogged_one(
    stockade: Any, steward: Running, ca_pem: Path, log_key: LogKey, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    _sign_logged(pkg, keys["author"], steward, ca_pem)
    assert _sign(pkg, keys["reviewer"], role="reviewer").exit_code == 0  # outside the log
    author, reviewer = _raw(keys["author"]), _raw(keys["reviewer"])
    policy_file = tmp_path / "logged.toml"
    policy_file.write_text(
        'version = 1\nname = "logged"\nplatforms = ["sim"]\n[workload]\n'
        f'signers = ["{author.hex()}", "{reviewer.hex()}"]\nrequire_log = true\n'
        f'log_keys = ["{log_key.log_id.hex()}"]\n'
    )
    proc = stockade("run", "--policy", str(policy_file), "--json", str(pkg), "--", "Ann")
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["stdout"].startswith("Hello, Ann!")
    # The Keep verified and measured the logged signature only.
    assert doc["workload"]["signers"] == [{"role": "author", "kid": hashlib.sha256(author).hexdigest()}]
    unlogged = _package(tmp_path, "unlogged")
    assert _sign(unlogged, keys["author"]).exit_code == 0
    proc = stockade("run", "--policy", str(policy_file), str(unlogged), "--", "Ann")
    assert proc.returncode == 112
    err = proc.stderr.decode()
    assert "workload.require_log" in err and "no inclusion proof" in err
    assert b"Hello" not in proc.stdout


# --------------------------------------------------------------------------- the steward's own policy


def test_steward_policy_require_log_certifies_only_logged_signers(tmp_path: Path, state_dir: Path) -> None:
    import datetime as dt

    from steward_support import DIGEST, MEASUREMENT, events, new_key, policy_toml, register_of, sim_evidence
    from stockade.errors import CertificateRequestRefused
    from stockade.evidence.sim.psp import SimPsp
    from stockade.package.signing import signed_bytes
    from stockade.steward import service
    from stockade.steward.request import request_certificate

    key = Ed25519PrivateKey.generate()
    raw = raw_public_key(key.public_key())
    sdir = tmp_path / "state"
    psp = SimPsp(simchip.load_chip(state_dir), MEASUREMENT)
    with create_ca(sdir, "require_log CA") as ca:
        tlog, _, close = service.open_log(ca, sdir, None, dt.datetime.now(dt.UTC))
        log_id = tlog.key.log_id
        close()
        text = policy_toml(signers=(raw,)) + f'require_log = true\nlog_keys = ["{log_id.hex()}"]\n'
        trust = StewardTrust(policy=loads_policy(text, "<steward>"), sim_root=simchip.sim_root(state_dir))
        with run_steward(ca, sdir, trust) as running:
            evs = events(signer=raw)

            def certify() -> Any:
                return request_certificate(
                    running.url,
                    ca=running.ca,
                    key=new_key(),
                    register=register_of(evs),
                    events=evs,
                    evidence=sim_evidence(psp),
                )

            with pytest.raises(CertificateRequestRefused) as info:
                certify()
            problem = info.value.problem  # type: ignore[attr-defined]
            assert problem["refusal"]["rule"] == "workload.require_log"
            assert "0 of the 1" in problem["refusal"]["actual"]
            # Logged with another role than the Keep measured: still refused.
            reviewer = PackageSignatureEntry(
                DIGEST, raw, "reviewer", key.sign(signed_bytes(DIGEST, "reviewer"))
            )
            log_signature(running.url, reviewer, ca=running.ca)
            with pytest.raises(CertificateRequestRefused, match="in this steward's log"):
                certify()
            author = PackageSignatureEntry(DIGEST, raw, "author", key.sign(signed_bytes(DIGEST, "author")))
            log_signature(running.url, author, ca=running.ca)
            issued = certify()
            # A policy that pins another log does not count this steward's entries.
            from stockade.steward.signatures import signature_log

            state = signature_log(running.steward)
            assert state.holds(DIGEST, raw, "author", (log_id,))
            assert not state.holds(DIGEST, raw, "author", (bytes(32),))
            from cryptography import x509

            from stockade.steward.verify import verify_workload_certificate

            cert = x509.load_der_x509_certificate(issued.certificate)
            identity = verify_workload_certificate([cert], running.ca, dt.datetime.now(dt.UTC))
            assert identity.signer_keys == (raw,)


def test_signing_again_keeps_the_stored_proof(
    steward: Running, ca_pem: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    pkg = _package(tmp_path)
    _sign_logged(pkg, keys["author"], steward, ca_pem)
    logged = Package.from_bytes(pkg.read_bytes()).signatures[0].log
    assert logged is not None
    # The same key and role: the same signature (Ed25519 is deterministic), still logged.
    assert _sign(pkg, keys["author"]).exit_code == 0
    assert Package.from_bytes(pkg.read_bytes()).signatures[0].log == logged
    # Another role: another signature, which the old proof is not for.
    assert _sign(pkg, keys["author"], role="reviewer").exit_code == 0
    assert Package.from_bytes(pkg.read_bytes()).signatures[0].log is None


def test_endpoint_bodies_match_the_api_cddl(steward: Running) -> None:
    """The endpoint's request, answer and refusal against docs/steward-api.cddl."""
    import pycddl

    docs = Path(__file__).resolve().parent.parent / "docs"
    cddl = (docs / "steward-api.cddl").read_text() + "\n" + (docs / "protocol.cddl").read_text()

    def valid(rule: str, data: bytes) -> bool:
        try:
            pycddl.Schema(f"root = {rule}\n{cddl}").validate_cbor(data)
        except pycddl.ValidationError:
            return False
        return True

    from stockade.package.signing import signed_bytes

    key = Ed25519PrivateKey.generate()
    digest = hashlib.sha256(b"cddl").digest()
    entry = PackageSignatureEntry(
        digest, raw_public_key(key.public_key()), "author", key.sign(signed_bytes(digest, "author"))
    )
    body = encode_entry(entry)
    assert valid("package-signature-request", body)
    with Connection(steward.url, steward.ca) as conn:
        status, media, answer = conn.call("POST", PATH, body)
        assert (status, media) == (200, api.CBOR) and valid("package-signature-response", answer)
        bad = encode_entry(dataclasses.replace(entry, role="reviewer"))
        status, media, problem = conn.call("POST", PATH, bad)
        assert (status, media) == (422, api.PROBLEM) and valid("steward-problem", problem)
    assert not valid("package-signature-response", api.dumps({"log-index": 1}))
