"""Network sockets of a workload, with TLS terminated by the Keep runtime
(issue 17; docs/steward.md, "Networked workloads"; ADR 0027).

wasmtime-py 50 cannot preopen a socket (its ``WasiConfig`` has no such
setting and the C library it wraps no longer exports
``wasi_config_preopen_socket``), so the Keep runtime implements the
sockets itself as *virtual descriptors*: numbers from :data:`FD_BASE` up,
which wasmtime's own WASI never hands out (it allocates descriptors from the
lowest free number and its ``fd_renumber`` only moves onto an existing
descriptor). For a workload that declares sockets, and only for it, the
runner's Linker shadows eight ``wasi_snapshot_preview1`` functions
(:data:`SHADOWED`) with host functions of this module: on one of our
descriptors they act on the socket, on any other descriptor they call
wasmtime's own implementation.

That call goes through a small forwarding module (:data:`FORWARDER_WAT`),
instantiated after the workload with the workload's exported memory: a
host function cannot call wasmtime's WASI function directly (a ``Func``
taken from the Linker before shadowing runs, but wasmtime's WASI then looks
for the *calling instance's* ``memory`` export and finds none: "missing
required memory export"); called from the forwarder, whose ``memory``
export is the workload's memory, it works on the workload's memory as when
the workload calls it. Measured in ADR 0027.

TLS 1.3 with pyOpenSSL, the Keep's service key and its steward certificate
(:class:`stockade.keep.service.ServiceIdentity`). A listen socket's peer
must present a workload certificate when the manifest names ``peers``; a
connect socket always checks the server's. The check is
:func:`stockade.steward.verify.verify_workload_certificate` against the
steward CA the client pinned, at the current time, then the manifest's
signers (key ids) or digests; a peer that fails is closed before the
workload sees it (listen) or reported as an error (connect), and the
client gets a ``net`` ``refused`` event. The workload sees plain bytes.

Blocking only: ``sock_accept`` with ``fdflags.nonblock`` answers ``again``
when no connection waits; ``poll_oneoff`` and ``fd_fdstat_set_flags`` on
these descriptors are not supported (docs/limitations.md). Every wait
checks the runner's stop flag (time, output, client gone) at least every
:data:`POLL_INTERVAL` seconds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL

from stockade.errors import WorkloadCertificateInvalid, WorkloadRejected
from stockade.keep.service import ServiceIdentity
from stockade.steward.verify import WorkloadIdentity, verify_workload_certificate
from stockade.wire.messages import (
    MAX_NET_DETAIL,
    UNIX_PREFIX,
    Net,
    SocketPlan,
    parse_socket_address,
    parse_unix_address,
)

# WASI preview 1 errno values: enum ``errno`` of
# https://github.com/WebAssembly/WASI/blob/main/legacy/preview1/witx/typenames.witx
# (the variant's index is its value).
SUCCESS = 0
ACCES = 2
AGAIN = 6
BADF = 8
CONNREFUSED = 14
CONNRESET = 15
FAULT = 21
INTR = 27
INVAL = 28
IO = 29
MFILE = 33
NFILE = 41
NOTCONN = 53
NOTSUP = 58
PIPE = 64
TIMEDOUT = 73

#: ``filetype::socket_stream`` (typenames.witx).
FILETYPE_SOCKET_STREAM = 6
#: ``fdflags::nonblock`` (bit 2).
FDFLAGS_NONBLOCK = 1 << 2
#: ``sdflags`` (bits 0 and 1).
SHUT_RD = 1
SHUT_WR = 2
#: ``rights`` bits (typenames.witx: fd_read is bit 1, fd_write 6,
#: poll_fd_readwrite 27, sock_shutdown 28, sock_accept 29).
RIGHTS_CONNECTION = (1 << 1) | (1 << 6) | (1 << 27) | (1 << 28)
RIGHTS_LISTENER = (1 << 27) | (1 << 29)

#: First virtual descriptor. WASI descriptors are u32; Rust's RawFd and C's
#: int are i32, so every number stays below 2**31. wasmtime allocates its
#: own from 0 up (lowest free first): it would reach 2**30 only with about a
#: billion descriptors open at once.
FD_BASE = 1 << 30
#: Connections of one listen socket that the workload may hold open at
#: once; ``sock_accept`` beyond it answers ``mfile`` until one is closed.
MAX_CONNECTIONS = 16
#: The listen backlog (connections the kernel queues before the workload
#: accepts them).
BACKLOG = 16
#: Bytes one fd_read / sock_recv returns, or one fd_write / sock_send
#: takes, at most (a short count, as POSIX allows; callers loop).
MAX_IO = 64 * 1024
#: iovec entries one call may name (POSIX IOV_MAX on Linux is 1024).
MAX_IOVECS = 1024
#: Seconds a peer has to complete the TCP connect and the TLS handshake.
CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
#: How often a blocked call looks at the stop flag.
POLL_INTERVAL = 0.1
#: ``net`` events one run sends at most (then they are dropped: a workload
#: that retries a refused connect in a loop cannot flood its client).
MAX_EVENTS = 256

#: The functions shadowed, with their core signatures (params; all return
#: an errno as i32): wasi_snapshot_preview1.witx.
SHADOWED: dict[str, int] = {
    "fd_read": 4,
    "fd_write": 4,
    "fd_close": 1,
    "fd_fdstat_get": 2,
    "sock_accept": 3,
    "sock_recv": 6,
    "sock_send": 5,
    "sock_shutdown": 2,
}


def _forwarder_wat() -> str:
    imports, funcs = [], []
    for name, n in SHADOWED.items():
        params = " ".join(["i32"] * n)
        imports.append(
            f'(import "wasi_snapshot_preview1" "{name}" (func ${name} (param {params}) (result i32)))'
        )
        gets = " ".join(f"local.get {i}" for i in range(n))
        funcs.append(f'(func (export "{name}") (param {params}) (result i32) {gets} call ${name})')
    return (
        "(module\n"
        + "\n".join(imports)
        + '\n(import "stockade" "memory" (memory 0))\n(export "memory" (memory 0))\n'
        + "\n".join(funcs)
        + "\n)"
    )


#: The forwarding module: each export calls wasmtime's WASI function of the
#: same name, with the workload's memory as its ``memory`` export.
FORWARDER_WAT = _forwarder_wat()


class _Errno(Exception):
    """Answer the workload's call with this WASI errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.errno = code


class _Stopped(Exception):
    """The runner stopped the workload (time, output, client gone)."""


class PeerRefused(Exception):
    """A peer's certificate is not acceptable (the reason is the message)."""


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_listener(address: str) -> tuple[socket.socket, str]:
    """A non-blocking listening socket on ``address`` (HOST:PORT, or
    unix:/PATH: a published port the keep manager forwards to, ADR 0027
    addendum) and the address it is bound to, as the ``listening`` event
    names it. OSError when it cannot be bound."""
    if address.startswith(UNIX_PREFIX):
        path = parse_unix_address(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # Only this user (the manager that forwards to it runs as it).
            os.chmod(path, 0o600)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock, address
    host, port = parse_socket_address(address, "listen")
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()
    return sock, _fmt(bound[0], bound[1])


def _kid(raw_key: bytes) -> str:
    """A signer key's id: SHA-256 hex of the raw Ed25519 key (as
    stockade.package.signing.raw_key_id and the manifest's ``signers``)."""
    return hashlib.sha256(raw_key).hexdigest()


def check_peer(chain: list[Any], plan: SocketPlan, ca: Any, now: dt.datetime) -> WorkloadIdentity:
    """The peer's workload identity if its certificate chain verifies under
    the steward CA at ``now`` and names one of ``plan``'s signers or
    digests; PeerRefused (with the reason) otherwise."""
    try:
        identity = verify_workload_certificate(chain, ca, now)
    except WorkloadCertificateInvalid as exc:
        raise PeerRefused(exc.detail) from None
    if identity.package_digest.hex() in plan.digests:
        return identity
    if any(_kid(k) in plan.signers for k in identity.signer_keys):
        return identity
    raise PeerRefused(
        f"peer {identity.uri} is not one of the workloads {plan.kind} socket {plan.name!r} accepts"
    )


@dataclass
class _Conn:
    """An established TLS connection (accepted or connected)."""

    tls: Any  # SSL.Connection over a non-blocking socket
    sock: socket.socket
    listener: _Listener | None
    read_closed: bool = False
    write_closed: bool = False


@dataclass
class _Listener:
    plan: SocketPlan
    sock: socket.socket
    ctx: Any
    open: int = 0


@dataclass
class _Connector:
    """A connect socket: its descriptor is a connection once established."""

    plan: SocketPlan
    ctx: Any
    conn: _Conn | None = None
    closed: bool = False


@dataclass
class NetRuntime:
    """The sockets of one run. ``emit`` sends a ``net`` event to the client;
    ``stopped`` says whether the runner has stopped the workload."""

    plans: tuple[SocketPlan, ...]
    service: ServiceIdentity
    emit: Callable[[Net], None]
    stopped: Callable[[], bool]
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    _listeners: dict[int, _Listener] = field(default_factory=dict)
    _connectors: dict[int, _Connector] = field(default_factory=dict)
    _conns: dict[int, _Conn] = field(default_factory=dict)
    _next_fd: int = FD_BASE
    _events: int = 0
    _forward: dict[str, Any] = field(default_factory=dict)
    _store: Any = None

    # -- set-up ---------------------------------------------------------------------------------

    def _fd(self) -> int:
        if self._next_fd >= 1 << 31:
            raise _Errno(NFILE)
        fd, self._next_fd = self._next_fd, self._next_fd + 1
        return fd

    def _context(self, server: bool, require_peer: bool) -> Any:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(self.service.certificate)
        ctx.use_privatekey(self.service.key)
        ctx.check_privatekey()
        # No resumption: every connection presents and checks certificates.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_options(SSL.OP_NO_TICKET)
        if require_peer:
            # OpenSSL checks the CertificateVerify signature (the peer holds
            # the key); the chain and the profile are checked by
            # verify_workload_certificate after the handshake, so OpenSSL's
            # own chain verdict is not used.
            flags = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if server else 0)
            ctx.set_verify(flags, lambda *_: True)
        return ctx

    def start(self) -> list[tuple[str, str]]:
        """Bind every listen socket (a ``listening`` event each) and number
        every socket; returns the environment variables that tell the
        workload its descriptors. WorkloadRejected when an address cannot
        be bound."""
        env: list[tuple[str, str]] = []
        for plan in self.plans:
            fd = self._fd()
            env.append((plan.env_name, str(fd)))
            if plan.kind == "connect":
                self._connectors[fd] = _Connector(plan, self._context(server=False, require_peer=True))
                continue
            try:
                sock, where = _bind_listener(plan.address)
            except OSError as exc:
                raise WorkloadRejected(
                    f"listen socket {plan.name!r}: the Keep cannot bind {plan.address} "
                    f"({exc.strerror or type(exc).__name__})"
                ) from None
            ctx = self._context(server=True, require_peer=plan.peers_required)
            self._listeners[fd] = _Listener(plan, sock, ctx)
            self._event("listening", plan.name, where)
        return env

    def define(self, linker: Any) -> None:
        """Shadow the socket functions on ``linker`` (which has WASI)."""
        import wasmtime

        i32 = wasmtime.ValType.i32()
        linker.allow_shadowing = True
        for name, n in SHADOWED.items():
            linker.define_func(
                "wasi_snapshot_preview1",
                name,
                wasmtime.FuncType([i32] * n, [i32]),
                self._host(name),
                access_caller=True,
            )

    def attach(self, engine: Any, store: Any, instance: Any) -> None:
        """Instantiate the forwarder on the workload's memory (after the
        workload's instantiation, before its ``_start``)."""
        import wasmtime

        memory = instance.exports(store).get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise WorkloadRejected("a workload with network sockets must export its memory as 'memory'")
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        linker.define(store, "stockade", "memory", memory)
        forwarder = linker.instantiate(
            store, wasmtime.Module(engine, bytes(wasmtime.wat2wasm(FORWARDER_WAT)))
        )
        exports = forwarder.exports(store)
        self._forward = {name: exports[name] for name in SHADOWED}
        self._store = store

    def close(self) -> None:
        """Close every socket (close_notify where a connection is open)."""
        for conn in list(self._conns.values()):
            self._close_conn(conn)
        for connector in self._connectors.values():
            if connector.conn is not None:
                self._close_conn(connector.conn)
        for listener in self._listeners.values():
            listener.sock.close()
        self._conns.clear()
        self._listeners.clear()
        self._connectors.clear()

    # -- events and waits ------------------------------------------------------------------------

    def _event(self, event: str, name: str, detail: str) -> None:
        if self._events >= MAX_EVENTS:
            return
        self._events += 1
        # A client gone is noticed by the output path; an event never fails a call.
        text = "".join(c if c.isprintable() else "?" for c in detail)
        if len(text) > MAX_NET_DETAIL:
            text = text[: MAX_NET_DETAIL - 6] + " [...]"
        with contextlib.suppress(Exception):
            self.emit(Net(event=event, name=name, detail=text))

    def _wait(self, sock: socket.socket, write: bool, deadline: float | None) -> None:
        """Until ``sock`` is readable (writable), the runner stops the
        workload (_Stopped) or ``deadline`` passes (TimeoutError). poll(2),
        not select(2): the workload's open files may push our descriptors
        past FD_SETSIZE."""
        poller = select.poll()
        poller.register(sock, select.POLLOUT if write else select.POLLIN)
        while True:
            if self.stopped():
                raise _Stopped()
            timeout = POLL_INTERVAL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError()
                timeout = min(timeout, left)
            if poller.poll(timeout * 1000):
                return  # ready, or an error/hang-up that the next call reports

    def _drive(self, op: Callable[[], Any], sock: socket.socket, deadline: float | None) -> Any:
        """Run a pyOpenSSL operation on a non-blocking socket to completion."""
        while True:
            try:
                return op()
            except SSL.WantReadError:
                self._wait(sock, False, deadline)
            except SSL.WantWriteError:
                self._wait(sock, True, deadline)

    def _handshake(self, tls: Any, sock: socket.socket, plan: SocketPlan) -> str:
        """TLS handshake within HANDSHAKE_TIMEOUT, then the peer check; the
        peer's workload URI (or "anonymous"). PeerRefused, TimeoutError,
        OSError or SSL.Error when the connection cannot be used."""
        self._drive(tls.do_handshake, sock, time.monotonic() + HANDSHAKE_TIMEOUT)
        if tls.get_protocol_version_name() != "TLSv1.3":  # pragma: no cover - the context allows only 1.3
            raise PeerRefused("not TLS 1.3")
        if not plan.peers_required:
            return "anonymous"
        leaf = tls.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            raise PeerRefused("the peer presented no certificate")
        rest = [c for c in tls.get_peer_cert_chain(as_cryptography=True) or [] if c != leaf]
        return check_peer([leaf, *rest], plan, self.service.ca, self.clock()).uri

    def _close_conn(self, conn: _Conn) -> None:
        try:
            if not conn.write_closed:
                conn.tls.shutdown()  # close_notify, best effort (non-blocking)
        except Exception:  # noqa: S110 - the peer may be gone
            pass
        conn.sock.close()
        if conn.listener is not None:
            conn.listener.open -= 1
            conn.listener = None

    # -- the operations --------------------------------------------------------------------------

    def _accept(self, listener: _Listener, flags: int) -> int:
        if flags & ~FDFLAGS_NONBLOCK:
            raise _Errno(INVAL)
        if listener.open >= MAX_CONNECTIONS:
            raise _Errno(MFILE)
        name = listener.plan.name
        while True:
            if flags & FDFLAGS_NONBLOCK:
                poller = select.poll()
                poller.register(listener.sock, select.POLLIN)
                if not poller.poll(0):
                    raise _Errno(AGAIN)
            else:
                self._wait(listener.sock, False, None)
            try:
                sock, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # nothing after all, or the peer left before we took it
            except OSError as exc:
                raise _Errno({errno.EMFILE: MFILE, errno.ENFILE: NFILE}.get(exc.errno or 0, IO)) from None
            sock.setblocking(False)
            tls = SSL.Connection(listener.ctx, sock)
            tls.set_accept_state()
            try:
                peer = self._handshake(tls, sock, listener.plan)
            except _Stopped:
                sock.close()
                raise
            except PeerRefused as exc:
                sock.close()
                self._event("refused", name, f"incoming connection: {exc}")
                continue
            except TimeoutError:
                sock.close()
                self._event(
                    "refused", name, f"incoming connection: no TLS handshake within {HANDSHAKE_TIMEOUT:g} s"
                )
                continue
            except (OSError, SSL.Error) as exc:
                sock.close()
                self._event(
                    "refused", name, f"incoming connection: TLS handshake failed ({_ssl_reason(exc)})"
                )
                continue
            fd = self._fd()
            listener.open += 1
            self._conns[fd] = _Conn(tls, sock, listener)
            self._event("accepted", name, peer)
            return fd

    def _connect(self, connector: _Connector) -> _Conn:
        """The connect socket's connection, established at first use."""
        if connector.closed:
            raise _Errno(BADF)
        if connector.conn is not None:
            return connector.conn
        plan = connector.plan
        host, port = parse_socket_address(plan.address, "connect")
        deadline = time.monotonic() + CONNECT_TIMEOUT
        sock: socket.socket | None = None
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise ConnectionRefusedError(err, os.strerror(err))
            self._wait(sock, True, deadline)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise ConnectionRefusedError(err, os.strerror(err))
            tls = SSL.Connection(connector.ctx, sock)
            tls.set_connect_state()
            peer = self._handshake(tls, sock, plan)
        except _Stopped:
            if sock is not None:
                sock.close()
            raise
        except PeerRefused as exc:
            self._refuse_connect(sock, plan, str(exc))
            raise _Errno(ACCES) from None
        except TimeoutError:
            self._refuse_connect(sock, plan, f"no connection and TLS handshake within {CONNECT_TIMEOUT:g} s")
            raise _Errno(TIMEDOUT) from None
        except (OSError, SSL.Error) as exc:
            self._refuse_connect(sock, plan, f"cannot connect to {plan.address} ({_ssl_reason(exc)})")
            raise _Errno(CONNREFUSED) from None
        connector.conn = _Conn(tls, sock, None)
        self._event("connected", plan.name, peer)
        return connector.conn

    def _refuse_connect(self, sock: socket.socket | None, plan: SocketPlan, reason: str) -> None:
        if sock is not None:
            sock.close()
        self._event("refused", plan.name, reason)

    def _connection(self, fd: int) -> _Conn:
        conn = self._conns.get(fd)
        if conn is not None:
            return conn
        connector = self._connectors.get(fd)
        if connector is not None:
            return self._connect(connector)
        raise _Errno(NOTCONN)  # a listener

    def _recv(self, conn: _Conn, size: int) -> bytes:
        if conn.read_closed or size == 0:
            return b""
        try:
            data = self._drive(lambda: conn.tls.recv(size), conn.sock, None)
        except SSL.ZeroReturnError:
            conn.read_closed = True
            return b""
        except SSL.Error:
            # The peer reset the connection, ended it without close_notify,
            # or sent an alert (e.g. its runtime refused our certificate).
            conn.read_closed = True
            raise _Errno(CONNRESET) from None
        return bytes(data)

    def _send(self, conn: _Conn, data: bytes) -> int:
        if conn.write_closed:
            raise _Errno(PIPE)
        if not data:
            return 0
        try:
            return int(self._drive(lambda: conn.tls.send(data), conn.sock, None))
        except (SSL.SysCallError, SSL.ZeroReturnError):
            raise _Errno(PIPE) from None
        except SSL.Error:
            raise _Errno(IO) from None

    # -- the host functions ----------------------------------------------------------------------

    def owns(self, fd: int) -> bool:
        return fd in self._conns or fd in self._listeners or fd in self._connectors

    def _host(self, name: str) -> Callable[..., int]:
        impl: Callable[..., int] = getattr(self, f"_wasi_{name}")

        def call(caller: Any, fd: int, *args: int) -> int:
            # Called from inside wasmtime: answers an errno, never raises
            # (an exception would trap the workload).
            if not self.owns(fd):
                forward = self._forward.get(name)
                if forward is None:  # called before attach (a start function)
                    return NOTSUP
                return int(forward(caller, fd, *args))
            try:
                memory = caller.get("memory")
                if memory is None:
                    return FAULT
                return impl(_Mem(memory, caller), fd, *args)
            except _Errno as exc:
                return exc.errno
            except _Stopped:
                return INTR
            except Exception:
                return IO

        return call

    def _wasi_fd_read(self, mem: _Mem, fd: int, iovs: int, count: int, out: int) -> int:
        buffers = mem.iovecs(iovs, count)
        data = self._recv(self._connection(fd), min(MAX_IO, sum(n for _, n in buffers)))
        mem.scatter(buffers, data)
        mem.u32(out, len(data))
        return SUCCESS

    def _wasi_fd_write(self, mem: _Mem, fd: int, iovs: int, count: int, out: int) -> int:
        data = mem.gather(mem.iovecs(iovs, count), MAX_IO)
        mem.u32(out, self._send(self._connection(fd), data))
        return SUCCESS

    def _wasi_sock_recv(
        self, mem: _Mem, fd: int, iovs: int, count: int, flags: int, out: int, oflags: int
    ) -> int:
        if flags:  # recv_peek and recv_waitall are not supported
            return NOTSUP
        buffers = mem.iovecs(iovs, count)
        data = self._recv(self._connection(fd), min(MAX_IO, sum(n for _, n in buffers)))
        mem.scatter(buffers, data)
        mem.u32(out, len(data))
        mem.write(oflags, b"\0\0")  # roflags: u16, none set
        return SUCCESS

    def _wasi_sock_send(self, mem: _Mem, fd: int, iovs: int, count: int, flags: int, out: int) -> int:
        if flags:  # siflags has no flag defined
            return INVAL
        data = mem.gather(mem.iovecs(iovs, count), MAX_IO)
        mem.u32(out, self._send(self._connection(fd), data))
        return SUCCESS

    def _wasi_sock_accept(self, mem: _Mem, fd: int, flags: int, out: int) -> int:
        listener = self._listeners.get(fd)
        if listener is None:
            return NOTSUP  # a connection: not a listening socket
        mem.check(out, 4)
        mem.u32(out, self._accept(listener, flags))
        return SUCCESS

    def _wasi_sock_shutdown(self, mem: _Mem, fd: int, how: int) -> int:
        if how not in (SHUT_RD, SHUT_WR, SHUT_RD | SHUT_WR):
            return INVAL
        conn = self._connection(fd)
        if how & SHUT_WR and not conn.write_closed:
            with contextlib.suppress(SSL.Error):
                conn.tls.shutdown()  # close_notify: the peer reads end of stream
            conn.write_closed = True
        if how & SHUT_RD:
            conn.read_closed = True
        return SUCCESS

    def _wasi_fd_close(self, mem: _Mem, fd: int) -> int:
        conn = self._conns.pop(fd, None)
        if conn is not None:
            self._close_conn(conn)
            return SUCCESS
        connector = self._connectors.get(fd)
        if connector is not None:
            del self._connectors[fd]
            if connector.conn is not None:
                self._close_conn(connector.conn)
            return SUCCESS
        listener = self._listeners.pop(fd)
        listener.sock.close()
        return SUCCESS

    def _wasi_fd_fdstat_get(self, mem: _Mem, fd: int, out: int) -> int:
        # fdstat: filetype u8 @0, fdflags u16 @2, rights_base u64 @8,
        # rights_inheriting u64 @16; 24 bytes (typenames.witx).
        rights = RIGHTS_LISTENER if fd in self._listeners else RIGHTS_CONNECTION
        mem.write(out, struct.pack("<BxHxxxxQQ", FILETYPE_SOCKET_STREAM, 0, rights, 0))
        return SUCCESS


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        return str(exc.args[0][0][-1])
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class _Mem:
    """Bounds-checked access to the workload's linear memory; every
    out-of-bounds pointer is ``fault``."""

    def __init__(self, memory: Any, store: Any) -> None:
        self.memory = memory
        self.store = store
        self.size = memory.data_len(store)

    def check(self, ptr: int, n: int) -> None:
        if ptr < 0 or n < 0 or ptr + n > self.size:
            raise _Errno(FAULT)

    def read(self, ptr: int, n: int) -> bytes:
        self.check(ptr, n)
        return bytes(self.memory.read(self.store, ptr, ptr + n))

    def write(self, ptr: int, data: bytes) -> None:
        self.check(ptr, len(data))
        if data:
            self.memory.write(self.store, data, ptr)

    def u32(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<I", value))

    def iovecs(self, ptr: int, count: int) -> list[tuple[int, int]]:
        """(buffer, length) of ``count`` iovecs at ``ptr`` (8 bytes each:
        u32 pointer, u32 length), each buffer in bounds."""
        if count > MAX_IOVECS:
            raise _Errno(INVAL)
        raw = self.read(ptr, 8 * count)
        out = []
        for i in range(count):
            buf, n = struct.unpack_from("<II", raw, 8 * i)
            self.check(buf, n)
            out.append((buf, n))
        return out

    def gather(self, buffers: list[tuple[int, int]], limit: int) -> bytes:
        parts, left = [], limit
        for buf, n in buffers:
            if left <= 0:
                break
            take = min(n, left)
            parts.append(self.read(buf, take))
            left -= take
        return b"".join(parts)

    def scatter(self, buffers: list[tuple[int, int]], data: bytes) -> None:
        offset = 0
        for buf, n in buffers:
            if offset >= len(data):
                break
            chunk = data[offset : offset + n]
            self.write(buf, chunk)
            offset += len(chunk)


def runtime_for(
    plans: tuple[SocketPlan, ...],
    service: ServiceIdentity | None,
    emit: Callable[[Net], None],
    stopped: Callable[[], bool],
) -> NetRuntime:
    """The sockets of a workload, or WorkloadRejected when the Keep has no
    service identity (no steward certificate: no attested TLS)."""
    if service is None:
        names = ", ".join(f"{p.kind} {p.name!r}" for p in plans)
        raise WorkloadRejected(
            f"the package declares network sockets ({names}), which need a service identity: "
            "deploy with --steward URL so that the Keep gets a workload certificate"
        )
    return NetRuntime(plans, service, emit, stopped)
