"""The etcd connection options shared by every command that talks to the
fleet directory (``stockade host serve --fleet``, ``stockade deploy
--fleet``, ``stockade fleet ...``): one decorator, :func:`fleet_options`,
that turns them into one :class:`~stockade.fleet.etcd.FleetConfig`.

The etcd password is read from ``--etcd-password-file`` or
``$STOCKADE_ETCD_PASSWORD``, never from the command line
(:func:`stockade.fleet.etcd.read_password`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from stockade.fleet.etcd import FleetConfig

F = TypeVar("F", bound=Callable[..., Any])

#: The fleet URL's environment variable (``--fleet``).
FLEET_ENV = "STOCKADE_FLEET"


def build_fleet_config(
    url: str,
    *,
    cacert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    user: str | None = None,
    password_file: Path | None = None,
    prefix: str | None = None,
) -> FleetConfig:
    """A FleetConfig from the option values (UsageError on a bad one)."""
    from stockade.errors import UsageError
    from stockade.fleet.etcd import DEFAULT_PREFIX, FleetConfig, parse_endpoints, read_password

    if (cert is None) != (key is None):
        raise UsageError("--etcd-cert and --etcd-key go together")
    prefix = DEFAULT_PREFIX if prefix is None else prefix
    if (
        not prefix.startswith("/")
        or not prefix.endswith("/")
        or len(prefix) > 200
        or not prefix.isprintable()
    ):
        raise UsageError(f"--fleet-prefix {prefix[:80]!r}: expected /PATH/ (starting and ending with /)")
    endpoints = parse_endpoints(url)
    password = read_password(password_file)
    if password is not None and user is None:
        raise UsageError("an etcd password was given (file or $STOCKADE_ETCD_PASSWORD) without --etcd-user")
    return FleetConfig(
        endpoints,
        ca_cert=cacert,
        client_cert=cert,
        client_key=key,
        user=user,
        password=password if user is not None else None,
        prefix=prefix,
    )


def fleet_options(*, required: bool = True, help_url: str | None = None) -> Callable[[F], F]:
    """``--fleet URL`` (``$STOCKADE_FLEET``), ``--etcd-cacert``,
    ``--etcd-cert``, ``--etcd-key``, ``--etcd-user``,
    ``--etcd-password-file`` and ``--fleet-prefix``. The command gets one
    ``fleet`` keyword: a :class:`~stockade.fleet.etcd.FleetConfig`, or
    None when ``required`` is False and no ``--fleet`` was given."""

    def decorate(fn: F) -> F:
        @click.option(
            "--fleet",
            "fleet_url",
            required=required,
            envvar=FLEET_ENV if required else None,
            metavar="URL",
            help=help_url
            or "The fleet's etcd: etcd://HOST[:PORT][,HOST[:PORT]...] (etcds:// for TLS) ($STOCKADE_FLEET).",
        )
        @click.option(
            "--etcd-cacert",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            metavar="FILE",
            help="PEM CA certificate(s) of etcd's TLS certificate (etcds://; default: the system CAs).",
        )
        @click.option(
            "--etcd-cert",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            metavar="FILE",
            help="PEM client certificate for etcd (with --etcd-key).",
        )
        @click.option(
            "--etcd-key",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            metavar="FILE",
            help="PEM private key of --etcd-cert.",
        )
        @click.option("--etcd-user", metavar="NAME", help="etcd user (password: --etcd-password-file).")
        @click.option(
            "--etcd-password-file",
            type=click.Path(dir_okay=False, path_type=Path),
            metavar="FILE",
            help="File whose first line is the etcd password (default: $STOCKADE_ETCD_PASSWORD).",
        )
        @click.option(
            "--fleet-prefix",
            metavar="PREFIX",
            default=None,
            help="Key prefix of the fleet in etcd [default: /stockade/v1/].",
        )
        @functools.wraps(fn)
        def wrapper(
            fleet_url: str | None,
            etcd_cacert: Path | None,
            etcd_cert: Path | None,
            etcd_key: Path | None,
            etcd_user: str | None,
            etcd_password_file: Path | None,
            fleet_prefix: str | None,
            **kwargs: Any,
        ) -> Any:
            from stockade.errors import UsageError

            fleet = None
            if fleet_url is not None:
                fleet = build_fleet_config(
                    fleet_url,
                    cacert=etcd_cacert,
                    cert=etcd_cert,
                    key=etcd_key,
                    user=etcd_user,
                    password_file=etcd_password_file,
                    prefix=fleet_prefix,
                )
            elif any(
                v is not None
                for v in (etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password_file, fleet_prefix)
            ):
                raise UsageError("the --etcd-* and --fleet-prefix options need --fleet URL")
            return fn(fleet=fleet, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
