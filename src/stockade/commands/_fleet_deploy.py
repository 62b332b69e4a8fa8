"""``stockade deploy --fleet URL``: read the fleet, place the deploy
(:func:`stockade.client.placement.plan_placement`) and run it on the first
candidate that works, trying the next one after a failure *before release*
(docs/fleet.md, "Placement"); the loop over the candidates is
:func:`stockade.client.failover.run_with_failover`, this module prints.

The retry boundary is the release (:class:`stockade.client.deploy.
ReleaseMark`): a failure while creating, attesting, verifying or loading a
Keep leaves nothing of the deployer's outside attested Keeps and started
no workload, so another host may be tried; once the release (secrets,
stdin; the workload starts) has begun, a failure ends the deploy as with
``--host``. Every decision (hosts considered, excluded and why, attempts
and their reasons, the host chosen) is printed on stderr, and in ``--json``
as the ``placement`` object, on success and on failure.

Nothing the fleet says is trusted: it chooses where the client tries, and
so where the API token goes (over https verified by --cacert or the
system CAs, never plain http to a host that is not loopback unless
--insecure-http), never whether a Keep is accepted.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stockade.errors import WorkloadExit

if TYPE_CHECKING:
    from stockade.client.deploy import DeployResult, ReleaseMark
    from stockade.client.placement import Attempt, Candidate, Placement
    from stockade.client.plan import RunOptions
    from stockade.commands.remote import _Connection
    from stockade.fleet.etcd import FleetConfig

#: Backends ``deploy --fleet`` asks a host for when --backend is not given:
#: the sim ones (their Keep runtime is measured here), and snp/tdx when a
#: --policy pins their measurements. ``vm`` only with --backend vm (it
#: needs the Keep image built here).
SIM_BACKENDS = frozenset({"sim", "sim-snp", "sim-tdx"})
HARDWARE_BACKENDS = frozenset({"snp", "tdx"})


@dataclass(frozen=True)
class FleetRequest:
    fleet: FleetConfig
    prefer_platform: str | None
    labels: tuple[tuple[str, str], ...]
    attempts: int
    #: --backend was given: only hosts offering it.
    backend_given: bool


def policy_platforms(opts: RunOptions) -> frozenset[str]:
    """The platforms the deploy's policy accepts: the --policy file's, the
    development policy's (--allow-sim), or the built-in default's."""
    from stockade.policy import default_policy, development_policy, load_policy

    if opts.policy is not None:
        return frozenset(load_policy(opts.policy).platforms)
    if opts.allow_sim:
        return frozenset(development_policy(bytes(48)).platforms)
    return frozenset(default_policy().platforms)


def usable_backends(opts: RunOptions, backend_given: bool) -> frozenset[str]:
    if backend_given:
        return frozenset({opts.backend})
    return SIM_BACKENDS | (HARDWARE_BACKENDS if opts.policy is not None else frozenset())


class _Report:
    """The placement decisions: stderr lines as they happen (unless --json
    or --quiet) and the ``placement`` JSON object."""

    def __init__(self, fleet_url: str, opts: RunOptions) -> None:
        self.fleet_url = fleet_url
        self.lines = not opts.as_json and not opts.quiet
        self.placement: Placement | None = None
        self.attempts: list[Attempt] = []

    def say(self, text: str) -> None:
        if self.lines:
            from stockade.commands._output import safe_text

            # Host ids, URLs and reasons come from the fleet or the hosts.
            click.echo(safe_text(text, limit=2000), err=True)

    def placed(self, placement: Placement) -> None:
        self.placement = placement
        self.say(
            f"stockade: fleet {self.fleet_url}: {placement.considered} host(s) registered, "
            f"{len(placement.candidates)} candidate(s)"
        )
        for host, reason in placement.excluded:
            self.say(f"  excluded     {host}: {reason}")
        for c in placement.candidates:
            bound = c.record.max_keeps if c.record.max_keeps is not None else "-"
            self.say(
                f"  candidate    {c.host}: {c.offer.backend} ({c.offer.platform}) at {c.record.api_url}, "
                f"{c.record.keeps_running}/{bound} Keeps{', preferred platform' if c.preferred else ''}"
            )

    def to_json(self, chosen: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {"fleet": self.fleet_url}
        if self.placement is not None:
            doc.update(self.placement.to_json())
        doc["attempts"] = [a.to_json() for a in self.attempts]
        doc["chosen"] = chosen
        return doc

    def attach_to_errors(self) -> None:
        """Put the placement object into the --json error document too."""
        from stockade.commands._output import ERROR_FORMAT, ErrorFormat

        ctx = click.get_current_context(silent=True)
        if ctx is None:
            return
        fmt = ctx.meta.get(ERROR_FORMAT) or ErrorFormat()
        if fmt.as_json:
            extra = tuple((k, v) for k, v in fmt.extra if k != "placement")
            ctx.meta[ERROR_FORMAT] = dataclasses.replace(
                fmt, extra=(*extra, ("placement", self.to_json(None)))
            )


def deploy_fleet(
    request: FleetRequest,
    connection: _Connection,
    opts: RunOptions,
    sim_root_file: Path | None,
    crls: tuple[bytes, ...],
) -> WorkloadExit:
    from stockade.client.failover import kill_unless_released, manager_for, run_with_failover
    from stockade.client.placement import Constraints, no_candidate_error, plan_placement, retryable
    from stockade.client.plan import choose_steward, parse_secrets, prepare, read_stdin
    from stockade.commands._run import print_json
    from stockade.commands.remote import _token, deploy_on, keep_measurement_for
    from stockade.fleet.etcd import Etcd
    from stockade.fleet.record import read_fleet

    if opts.backend in HARDWARE_BACKENDS and request.backend_given and opts.policy is None:
        keep_measurement_for(opts)  # raises the UsageError that names the need for --policy
    report = _Report(request.fleet.url, opts)
    measurements: dict[str, Callable[[], bytes]] = {}
    backends = usable_backends(opts, request.backend_given)
    if backends & SIM_BACKENDS:  # hash the Keep runtime while etcd answers
        measurements["sim"] = keep_measurement_for(dataclasses.replace(opts, backend="sim"))
    prepared = prepare(opts)
    steward = choose_steward(opts, prepared)
    if steward is not None:
        # VM Keeps (snp, tdx guests) have no network path to a steward:
        # place on process Keeps only (docs/limitations.md).
        from stockade.client.steward import VM_BACKENDS

        backends -= VM_BACKENDS
    token = _token(connection.token_file)
    constraints = Constraints(
        platforms=policy_platforms(opts),
        backends=backends,
        memory_bytes=prepared.limits.memory_bytes,
        prefer_platform=request.prefer_platform,
        labels=request.labels,
    )
    # FleetError (122, naming etcd and its endpoints) when etcd cannot be read.
    placement = plan_placement(read_fleet(Etcd(request.fleet)), constraints, random.Random())
    report.placed(placement)
    report.attach_to_errors()
    if not placement.candidates:
        raise no_candidate_error(request.fleet.url, placement)
    # Opened once: every attempt before release sends the same input (a
    # small one whole in the release; a larger one, or `-`, is streamed and
    # read only after the release, after which no attempt follows).
    stdin = read_stdin(opts, parse_secrets(opts.secret_refs))

    def run(
        candidate: Candidate, mark: ReleaseMark, created: list[str]
    ) -> tuple[str, tuple[DeployResult, dict[int, bytearray]]]:
        attempt_opts = dataclasses.replace(opts, backend=candidate.offer.backend)
        kind = "sim" if candidate.offer.backend in SIM_BACKENDS else candidate.offer.backend
        if kind not in measurements:
            measurements[kind] = keep_measurement_for(attempt_opts)
        url = candidate.record.api_url
        with (
            manager_for(url, token, connection.cacert, connection.insecure_http) as client,
            kill_unless_released(client, created, mark),
        ):
            result, out, keep_id = deploy_on(
                client,
                attempt_opts,
                prepared,
                measurements[kind],
                sim_root_file,
                crls,
                on_created=created.append,
                on_release=mark.mark,
                stdin=stdin,
            )
        return keep_id, (result, out)

    def on_start(number: int, total: int, candidate: Candidate) -> None:
        report.say(
            f"stockade: fleet: attempt {number} of {total}: {candidate.host} "
            f"({candidate.offer.backend} at {candidate.record.api_url})"
        )

    def on_failed(attempt: Attempt) -> None:
        report.attach_to_errors()
        err, host = attempt.error, attempt.candidate.host
        if attempt.released:
            report.say(f"stockade: fleet: {host} failed after the release: not retried elsewhere")
        elif err is not None and retryable(err):
            report.say(f"stockade: fleet: {host} failed before release: {err.title}: {err.detail}")

    chosen, (result, out) = run_with_failover(
        placement.candidates, request.attempts, run, report.attempts, on_start=on_start, on_failed=on_failed
    )
    if opts.as_json:
        print_json(
            result,
            out,
            keep_id=report.attempts[-1].keep_id,
            host=chosen.record.api_url,
            placement=report.to_json(chosen.host),
        )
    return WorkloadExit(result.exit_code)
