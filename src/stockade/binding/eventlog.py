"""The Keep's runtime event log: a hash-chained register, like a TPM PCR.

A Keep extends one 32-byte register with every item it loads before the
workload runs (the runtime, the package digest, every verified signer, every
file, the deploy-time configuration)::

    register_0 = 32 zero bytes
    register_i = SHA-256(register_{i-1} || SHA-256(event_i))
    event_i    = deterministic CBOR of [kind, name, digest]

and then answers with fresh evidence whose report data binds the final
register (stockade.binding.reportdata.identity_report_data). The client receives
the events, replays them and compares: the register proves that exactly
these events, in this order, were measured. Removing, adding, changing or
reordering an event changes the register. The construction is the one of a
TPM PCR extend (TCG PC Client Platform Firmware Profile, section 2.3.5:
``PCR_new = H(PCR_old || H(event data))``), with SHA-256.

Event kinds (docs/package.md, "Workload identity"):

``runtime``  name: the Keep runtime and engine versions; digest: SHA-256 of the name
``package``  name: "<manifest name> <version>"; digest: the package content digest
``signer``   name: the signature role (signed with the digest); digest: the key id (SHA-256 of the raw key)
``entry``    name: the entry module's path; digest: SHA-256 of the module
``file``     name: a packaged file's path; digest: SHA-256 of its bytes
``config``   name: "deploy"; digest: SHA-256 of the deterministic CBOR of the
             deploy-time configuration (args, env, files, limits)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cbor2

from stockade.errors import ProtocolError

REGISTER_SIZE = 32
INITIAL_REGISTER = bytes(REGISTER_SIZE)
KINDS = ("runtime", "package", "signer", "entry", "file", "config")
#: Most events a log may hold (a package of many files is still far below).
MAX_EVENTS = 100_000


@dataclass(frozen=True)
class Event:
    kind: str
    name: str
    digest: bytes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProtocolError(f"event log: unknown event kind {self.kind!r}")
        if not isinstance(self.name, str) or len(self.name) > 4096:
            raise ProtocolError("event log: an event name must be text of at most 4096 characters")
        if not isinstance(self.digest, bytes) or len(self.digest) != 32:
            raise ProtocolError(f"event log: {self.kind} event {self.name!r} needs a 32-byte digest")

    def encoded(self) -> bytes:
        return bytes(cbor2.dumps([self.kind, self.name, self.digest], canonical=True))

    def to_list(self) -> list[Any]:
        return [self.kind, self.name, self.digest]

    @classmethod
    def from_list(cls, value: Any) -> Event:
        if not (isinstance(value, list) and len(value) == 3):
            raise ProtocolError("event log: each event must be an array [kind, name, digest]")
        kind, name, digest = value
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(digest, bytes):
            raise ProtocolError("event log: an event is [text, text, bytes]")
        return cls(kind, name, digest)


def extend(register: bytes, event: Event) -> bytes:
    return hashlib.sha256(register + hashlib.sha256(event.encoded()).digest()).digest()


def replay(events: Iterable[Event]) -> bytes:
    """The register that measuring ``events`` in order produces."""
    register = INITIAL_REGISTER
    for event in events:
        register = extend(register, event)
    return register


class EventLog:
    """An append-only log and its register (the Keep's side)."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self.register = INITIAL_REGISTER

    def measure(self, kind: str, name: str, digest: bytes) -> None:
        event = Event(kind, name, digest)
        self._events.append(event)
        self.register = extend(self.register, event)

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)


def events_from_list(value: Any) -> tuple[Event, ...]:
    if not isinstance(value, list):
        raise ProtocolError("event log: events must be an array")
    if len(value) > MAX_EVENTS:
        raise ProtocolError(f"event log: more than {MAX_EVENTS} events")
    return tuple(Event.from_list(v) for v in value)


def check_workload_events(events: tuple[Event, ...], error: type[Exception]) -> Event:
    """The shape every workload event log has (the Keep's loader writes it,
    stockade.keep.session): the ``runtime`` event, then exactly one
    ``package`` event, one ``entry`` event, and the ``config`` event last.
    Returns the package event; raises ``error`` naming what is wrong. The
    client (stockade.client.identity) and the steward
    (stockade.steward.appraise) both check it."""
    kinds = Counter(e.kind for e in events)
    if [e.kind for e in events[:2]] != ["runtime", "package"] or kinds["package"] != 1:
        raise error("the event log does not start with the runtime and one package")
    if kinds["entry"] != 1 or kinds["config"] != 1 or events[-1].kind != "config":
        raise error("the event log lacks its entry module or configuration")
    return events[1]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
