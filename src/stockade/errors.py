"""The one small exception tree of stockade.

Every failure that a user can cause or meet is a :class:`StockadeError`
subclass. Each class maps to exactly one CLI exit code and one problem-details
type (RFC 9290), so scripts can tell failure classes apart. Messages are one
line, name what was expected and what was found, and never contain secrets.
"""

from __future__ import annotations

import enum


class StockadeError(Exception):
    """Base of every error stockade raises on purpose."""

    exit_code: int = 1
    problem_type: str = "error"
    title: str = "stockade error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class UsageError(StockadeError):
    """The command line or a local input file is wrong."""

    exit_code = 2
    problem_type = "usage"
    title = "usage error"


class VerificationFailed(StockadeError):
    """Evidence parsed but a cryptographic or binding check failed."""

    exit_code = 110
    problem_type = "verification-failed"
    title = "attestation verification failed"


class MalformedEvidence(StockadeError):
    """Evidence bytes do not have the structure the format requires."""

    exit_code = 111
    problem_type = "malformed-evidence"
    title = "malformed evidence"


class PolicyRejected(StockadeError):
    """Verified claims are not acceptable under the deployer's policy."""

    exit_code = 112
    problem_type = "policy-rejected"
    title = "refused by policy"


class LogProofError(VerificationFailed):
    """VerificationFailed (exit 110, same problem type) for the
    transparency log (:mod:`stockade.translog`): an inclusion or
    consistency proof that does not lead to the signed root, a tree head
    whose signature does not verify under the trusted log key, or a log
    whose entries do not match its own signed tree head (a rewritten or
    dropped entry). A subclass only for its title: the log proves nothing
    about attestation."""

    title = "transparency log verification failed"


class MalformedLogData(MalformedEvidence):
    """MalformedEvidence (exit 111, same problem type) for transparency log
    data that does not parse: a log entry, tree head or proof of the wrong
    CBOR shape, a hash of the wrong length. Only the title differs."""

    title = "malformed transparency log data"


class WorkloadCertificateInvalid(VerificationFailed):
    """VerificationFailed (exit 110, same problem type) for a steward
    workload certificate (:mod:`stockade.steward.verify`) that does not
    chain to the steward CA, is outside its validity at the time given,
    or does not follow the certificate profile (EKU, SAN URI, the
    platform/measurement/signer extensions). A subclass only for its
    title."""

    title = "workload certificate verification failed"


class CertificateRequestRefused(PolicyRejected):
    """PolicyRejected (exit 112, same problem type) for a certificate
    signing request the steward will not sign (:mod:`stockade.steward.profile`):
    its signature does not verify, its key type is not allowed, or it asks
    for extensions the profile does not set. A subclass only for its title."""

    title = "certificate request refused"


class ProtocolError(StockadeError):
    """A peer sent bytes that break the stockade protocol."""

    exit_code = 113
    problem_type = "protocol-error"
    title = "protocol error"


class ProtocolMisuse(StockadeError):
    """Stockade's own code drove a protocol state machine out of order
    (released secrets before accepting the identity, sent output before the
    release...). A bug in stockade, not a fault of the peer: the peer's
    violations are :class:`ProtocolError` (113). Exit 1, the generic
    failure status; never in :data:`ERROR_CLASSES`, so a peer that reports
    ``internal-error`` is still a :class:`ProtocolError` to us."""

    exit_code = 1
    problem_type = "internal-error"
    title = "internal error (a bug in stockade)"


class CollateralUnavailable(StockadeError):
    """Certificates, CRLs or TCB data needed for verification are missing."""

    exit_code = 114
    problem_type = "collateral-unavailable"
    title = "collateral unavailable"


class StewardUnavailable(CollateralUnavailable):
    """CollateralUnavailable (exit 114, same problem type) for a steward
    (docs/steward.md) a deploy with ``--steward`` needs and cannot get an
    answer from: no connection, a TLS certificate that does not chain to
    the pinned steward CA, a busy steward, a timeout. Like a collateral
    fetch, an outside service the host can block; retry later, or check
    the URL and ``--steward-ca``. A subclass only for its title: a refusal
    by the steward is CertificateRequestRefused (112) instead."""

    title = "steward unavailable"


class KeepDied(StockadeError):
    """The Keep process ended or vanished before it reported a result."""

    exit_code = 115
    problem_type = "keep-died"
    title = "Keep died"


class LimitExceeded(StockadeError):
    """The workload hit a limit (time, memory, output) and was stopped."""

    exit_code = 116
    problem_type = "limit-exceeded"
    title = "limit exceeded"

    def __init__(self, detail: str, limit: str = "") -> None:
        super().__init__(detail)
        self.limit = limit


class WorkloadRejected(StockadeError):
    """The workload is not something the Keep can run (not Wasm, no _start)."""

    exit_code = 117
    problem_type = "workload-rejected"
    title = "workload rejected"


class ChannelTampered(StockadeError):
    """The attested TLS channel to the Keep failed an integrity check: a
    record did not authenticate (bad record MAC, decryption failure), came
    out of order or in clear, or the Keep reported such a record (alert).
    Someone between the client and the Keep changed the stream; a clean
    end of the stream is :class:`KeepDied` instead."""

    exit_code = 118
    problem_type = "channel-integrity"
    title = "attested channel broken"


class WorkloadTrapped(StockadeError):
    """The workload trapped (unreachable, out-of-bounds access, ...)."""

    exit_code = 134
    problem_type = "workload-trapped"
    title = "workload trapped"


class UnmeasuredCode(StockadeError):
    """Code would run in the Keep that its launch measurement does not cover
    (a ``.pth`` file that runs code in every start-up). Host-side only: the
    loader refuses to measure and start a Keep; never sent as a problem."""

    exit_code = 120
    problem_type = "unmeasured-code"
    title = "unmeasured code"


class ImageError(StockadeError):
    """A Keep image cannot be built, read or measured: a missing kernel,
    QEMU or OVMF file, a manifest that does not match the files beside it,
    or measurement inputs that are malformed (a wrong-sized hash, an unknown
    vCPU type). Host- and client-side; never sent as a problem."""

    exit_code = 121
    problem_type = "keep-image"
    title = "Keep image error"


class FleetError(StockadeError):
    """The fleet directory (etcd) cannot be reached or read, or it names no
    host that placement may use. Host- and client-side; the fleet is
    untrusted data: this error never means an attestation failed."""

    exit_code = 122
    problem_type = "fleet"
    title = "fleet error"


class ManagerError(StockadeError):
    """The keep manager refused a request or could not be reached."""

    exit_code = 1
    problem_type = "host-manager"
    title = "keep manager error"

    def __init__(self, detail: str, status: int | None = None, manager_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.manager_type = manager_type


class ExitStatus(enum.IntEnum):
    """The CLI's exit statuses that are not a StockadeError (each of those
    carries its own ``exit_code`` above). A command returns one of these,
    or a :class:`WorkloadExit`; the error boundary (``stockade.cli``) exits
    with it (docs/exit-codes.md)."""

    OK = 0
    #: ``stockade host check``: no Keep backend is usable on this machine.
    NO_BACKEND = 1
    #: ``stockade host serve``: uvicorn's STARTUP_FAILURE (it logged why:
    #: port in use, ...).
    SERVER_STARTUP_FAILED = 3
    #: ``stockade keeps wait``: the Keep was still active after --timeout
    #: (the value coreutils' timeout(1) uses).
    WAIT_TIMED_OUT = 124
    #: Ctrl-C (SIGINT): 128 + 2, the shell's convention.
    INTERRUPTED = 130


class WorkloadExit(int):
    """The workload's own exit code, passed through as is by ``stockade
    run`` and ``deploy --host``: the boundary exits with it at once, without
    interpreter teardown (everything the user sees is flushed first)."""


ERROR_CLASSES: tuple[type[StockadeError], ...] = (
    UsageError,
    VerificationFailed,
    MalformedEvidence,
    PolicyRejected,
    ProtocolError,
    CollateralUnavailable,
    KeepDied,
    LimitExceeded,
    WorkloadRejected,
    ChannelTampered,
    WorkloadTrapped,
)

_BY_TYPE = {cls.problem_type: cls for cls in ERROR_CLASSES}


def error_class_for(problem_type: str) -> type[StockadeError]:
    """The error class for a problem type received from a peer."""
    return _BY_TYPE.get(problem_type, ProtocolError)
