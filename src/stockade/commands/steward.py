"""``stockade steward init|show|serve``: the steward's certificate
authority and its HTTPS service (stockade.steward; docs/steward.md).

The CA key is in a file (development only; ``init`` says so loudly) or
generated in a PKCS#11 token (``--pkcs11-module LIB --token-label
LABEL``). The token PIN comes from ``--pin-file FILE`` or
``$STOCKADE_PKCS11_PIN``, never from the command line, and is never
printed or stored.

Exit codes: 0 ok; 2 usage (bad command line, a state directory that is
not empty or not a steward's, an unreadable file, a PKCS#11 module, token,
key or PIN that does not work; ``serve`` without a policy); 3 ``serve``
could not start its server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stockade.commands._output import json_option
from stockade.errors import UsageError

state_dir_option = click.option(
    "--state-dir",
    "state_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The steward's state directory (ca.pem, steward.json; mode 0700).",
)


@click.group()
def steward() -> None:
    """The steward: an attestation-backed certificate authority for workloads."""


def _show_doc(state_dir: Path) -> dict[str, Any]:
    from stockade.steward.ca import CA_FILE, describe_key, read_state

    doc, cert = read_state(state_dir)
    key = doc["key"]
    return {
        "state_dir": str(state_dir),
        "ca_certificate": str(state_dir / CA_FILE),
        "subject": cert.subject.rfc4514_string(),
        "fingerprint_sha256": doc["ca_fingerprint_sha256"],
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key_storage": key.get("kind"),
        "key_location": describe_key(doc, state_dir),
        **(
            {"token_label": key.get("token_label"), "key_label": key.get("key_label")}
            if key.get("kind") == "pkcs11"
            else {}
        ),
    }


def _print(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"CA subject:      {doc['subject']}")
    click.echo(f"fingerprint:     sha256:{doc['fingerprint_sha256']}")
    click.echo(f"valid:           {doc['not_before']} to {doc['not_after']}")
    click.echo(f"key:             {doc['key_location']}")
    click.echo(f"CA certificate:  {doc['ca_certificate']}")


@steward.command()
@state_dir_option
@click.option("--name", default=None, help="The CA's common name (default: 'stockade steward CA').")
@click.option("--pkcs11-module", "module", help="PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so).")
@click.option("--token-label", help="Label of the token to generate the CA key in.")
@click.option(
    "--pin-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the token's user PIN (mode 0600); else $STOCKADE_PKCS11_PIN.",
)
@json_option("Print the result as JSON.")
def init(
    state_dir: Path,
    name: str | None,
    module: str | None,
    token_label: str | None,
    pin_file: Path | None,
    as_json: bool,
) -> None:
    """Create the CA (ECDSA P-384) in DIR (new or empty): DIR/ca.pem and
    DIR/steward.json, with the key generated in a PKCS#11 token or, for
    development only, in DIR/ca-key.pem."""
    from stockade.steward.ca import DEFAULT_NAME, FILE_KEY_WARNING, KEY_FILE, Pkcs11Options, create_ca

    if (module is None) != (token_label is None):
        raise UsageError("--pkcs11-module and --token-label go together")
    options = None
    if module is not None and token_label is not None:
        from stockade.steward.pkcs11 import read_pin

        options = Pkcs11Options(module, token_label, read_pin(pin_file))
    elif pin_file is not None:
        raise UsageError("--pin-file needs --pkcs11-module and --token-label")
    with create_ca(state_dir, name or DEFAULT_NAME, pkcs11=options):
        pass
    if options is None:
        click.secho(FILE_KEY_WARNING.format(path=state_dir / KEY_FILE), err=True, fg="yellow", bold=True)
    doc = _show_doc(state_dir)
    if as_json:
        _print(doc, True)
    else:
        click.echo(f"steward CA created in {state_dir}")
        _print(doc, False)


@steward.command()
@state_dir_option
@json_option("Print the result as JSON.")
def show(state_dir: Path, as_json: bool) -> None:
    """Print the CA's subject, fingerprint and where its key is (never a PIN)."""
    _print(_show_doc(state_dir), as_json)


def _file_or_none(path: Path | None, what: str) -> bytes | None:
    from stockade.commands._fileio import read_file

    return None if path is None else read_file(path)


@steward.command()
@state_dir_option
@click.option("--listen", default="127.0.0.1:8471", show_default=True, metavar="HOST:PORT")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The steward policy (a stockade policy file, docs/policy.md; [workload] applies too).",
)
@click.option(
    "--allow-sim",
    is_flag=True,
    help="Without --policy: the built-in development policy (sim allowed; NO hardware protection).",
)
@click.option(
    "--pin-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the token's user PIN (mode 0600); else $STOCKADE_PKCS11_PIN.",
)
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    metavar="NAME",
    help="A DNS name or IP address the TLS certificate names (repeat; default: the --listen host).",
)
@click.option(
    "--sim-root",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sim root certificate (PEM/DER, `stockade host sim-root`): verifies sim evidence.",
)
@click.option(
    "--sim-tdx-root",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sim TDX root certificate (DER/PEM): verifies sim-tdx evidence.",
)
@click.option(
    "--crl",
    "crls",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A CRL (DER/PEM) applied to the evidence chains it belongs to (repeat).",
)
@click.option(
    "--collateral",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of Intel collateral for TDX/SGX quotes (no network is used).",
)
@click.option(
    "--lifetime",
    type=click.IntRange(60, 86400),
    default=3600,
    show_default=True,
    help="Workload certificate lifetime, seconds.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1),
    default=120.0,
    show_default=True,
    help="Requests per minute per client address.",
)
@click.option("--burst", type=click.IntRange(min=1), default=30, show_default=True)
@click.option(
    "--max-request",
    type=click.IntRange(1024, 16 * 1024 * 1024),
    default=256 * 1024,
    show_default=True,
    help="Largest certify request body, bytes.",
)
@click.option("--max-connections", type=click.IntRange(min=16), default=256, show_default=True)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds a connection has to send a request head.",
)
def serve(
    state_dir: Path,
    listen: str,
    policy_file: Path | None,
    allow_sim: bool,
    pin_file: Path | None,
    server_names: tuple[str, ...],
    sim_root: Path | None,
    sim_tdx_root: Path | None,
    crls: tuple[Path, ...],
    collateral: Path | None,
    lifetime: int,
    rate: float,
    burst: int,
    max_request: int,
    max_connections: int,
    header_timeout: float,
) -> int:
    """Serve the steward's HTTPS API (docs/steward.md): appraise Keeps'
    certify requests under the policy, issue workload certificates, and log
    every issuance and refusal in DIR/log. The TLS certificate is issued by
    the CA at start for --server-name (default: the --listen host)."""
    import contextlib
    import datetime as dt
    import logging

    from stockade.commands._files import read_sim_root
    from stockade.commands.host import _parse_listen
    from stockade.errors import ExitStatus
    from stockade.host import guard
    from stockade.policy import development_policy, load_policy
    from stockade.steward import service
    from stockade.steward.appraise import StewardTrust
    from stockade.steward.ca import open_ca, read_state

    host, port = _parse_listen(listen)
    if policy_file is not None and allow_sim:
        raise UsageError("--allow-sim and --policy: name sim in the policy's platforms instead")
    if policy_file is None and not allow_sim:
        raise UsageError("give --policy FILE (production) or --allow-sim (development, sim allowed)")
    if policy_file is not None:
        policy = load_policy(policy_file)
    else:
        from stockade.measure.launch import keep_measurement

        policy = development_policy(keep_measurement())
    names = server_names or (host,)
    if any(n in ("0.0.0.0", "::") for n in names):  # noqa: S104 (a check, not a bind)
        raise UsageError("--listen on every address: name the server with --server-name HOST")
    intel = None
    if collateral is not None:
        from stockade.evidence.intel.collateral import load_collateral_dir

        collateral_dir = collateral

        def intel(quote: bytes, at: dt.datetime) -> Any:
            return load_collateral_dir(collateral_dir)

    trust = StewardTrust(
        policy=policy,
        sim_root=read_sim_root(sim_root) if sim_root is not None else None,
        sim_tdx_root=read_sim_root(sim_tdx_root, "--sim-tdx-root") if sim_tdx_root is not None else None,
        crls=tuple(b for b in (_file_or_none(p, "--crl") for p in crls) if b is not None),
        intel=intel,
    )
    doc, _ = read_state(state_dir)
    pin = None
    if doc["key"].get("kind") == "pkcs11":
        from stockade.steward.pkcs11 import read_pin

        pin = read_pin(pin_file)
    elif pin_file is not None:
        raise UsageError("--pin-file: this steward's CA key is a file, not in a token")
    now = dt.datetime.now(dt.UTC)
    limiter = guard.LogRateLimit()
    with open_ca(state_dir, pin) as ca:
        tlog, log_cert, close_log = service.open_log(ca, state_dir, pin, now)
        try:
            steward_ = service.Steward(ca, tlog, log_cert, trust, lifetime=dt.timedelta(seconds=lifetime))
            tls = service.ServerTls(ca, names, lock=steward_.lock)
            app = service.create_app(steward_, rate=rate, burst=burst, max_request=max_request)
            limits = guard.ConnectionLimits(max_connections, 128, header_timeout)
            config = service.uvicorn_config(
                app,
                host,
                port,
                tls,
                http=guard.guarded_protocol(limits, lambda reason: limiter.note(guard.shed_kind(reason))),
                limit_concurrency=max_connections + 1,
            )
            guard.attach_log_limit(limiter)
            steward_log = logging.getLogger("stockade.steward")
            if not steward_log.handlers:  # uvicorn configures its own loggers only
                handler = logging.StreamHandler()
                from uvicorn.logging import DefaultFormatter

                handler.setFormatter(
                    DefaultFormatter("%(levelprefix)s %(name)s: %(message)s", use_colors=False)
                )
                steward_log.addHandler(handler)
                steward_log.setLevel(logging.INFO)
            logging.getLogger("stockade.steward").info(
                "steward %s: policy %r; log %s (%d entries, key %s…); %s",
                ca.fingerprint[:16],
                policy.name,
                tlog.directory,
                tlog.size,
                tlog.key.log_id.hex()[:16],
                "sim evidence ALLOWED (no hardware protection)"
                if any(p.startswith("sim") for p in policy.platforms)
                else "sim refused",
            )
            if "sim" in policy.platforms and trust.sim_root is None:
                steward_log.warning(
                    "the policy allows sim but no --sim-root was given: sim evidence cannot verify"
                )
            if "sim-tdx" in policy.platforms and trust.sim_tdx_root is None:
                steward_log.warning(
                    "the policy allows sim-tdx but no --sim-tdx-root was given: sim-tdx evidence cannot verify"
                )
            server = service.make_server(config, tls)
            with contextlib.suppress(KeyboardInterrupt):
                server.run()
        finally:
            limiter.flush(force=True)
            close_log()
    if not server.started:
        return ExitStatus.SERVER_STARTUP_FAILED
    return ExitStatus.OK
