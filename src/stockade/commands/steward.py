"""``stockade steward init|show``: the steward's certificate authority
(stockade.steward; docs/steward.md). ``serve`` is *planned*.

The CA key is in a file (development only; ``init`` says so loudly) or
generated in a PKCS#11 token (``--pkcs11-module LIB --token-label
LABEL``). The token PIN comes from ``--pin-file FILE`` or
``$STOCKADE_PKCS11_PIN``, never from the command line, and is never
printed or stored.

Exit codes: 0 ok; 2 usage (bad command line, a state directory that is
not empty or not a steward's, an unreadable file, a PKCS#11 module, token,
key or PIN that does not work)."""

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
