"""Runs the kv example modules on bare wasmtime-py with socket descriptors
backed by plain loopback sockets (no TLS, no Keep): a test harness for the
workloads themselves, independent of the Keep runtime's network code.

wasmtime-py 50 has no preopened sockets (its WasiConfig offers files,
directories and stdio only), so the harness shadows the WASI preview 1
functions a Rust std program calls on a socket (``sock_accept``, ``fd_read``,
``fd_write``, ``fd_close``, ``sock_shutdown``, ``sock_recv``, ``sock_send``,
``fd_fdstat_get``) and serves standard input, output and error itself (a host
function cannot call wasmtime's own WASI ``fd_write`` for the module: that
needs the caller's memory, which a call from Python does not carry). Signatures and errno values: WASI preview 1
(https://github.com/WebAssembly/WASI/blob/main/legacy/preview1/witx/wasi_snapshot_preview1.witx
and typenames.witx: errno badf = 8, io = 29, notsock = 57; filetype
socket_stream = 6).

Run as ``python tests/kv_support.py CONFIG_JSON``: CONFIG has ``wasm``,
``args``, ``env`` and either ``listen`` ([host, port]: a listening socket
whose descriptor is put in STOCKADE_LISTEN_KV, its bound port printed on
stderr as ``kv_support: listening on PORT``) or ``connect`` ([host, port]:
a connected socket in STOCKADE_CONNECT_KV); ``fail_accepts`` N makes the
first N ``sock_accept`` calls fail with ``connaborted`` (13), as a runtime
would for a peer it refused. Exit status: the module's.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from typing import Any

import wasmtime

WASI = "wasi_snapshot_preview1"
ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_CONNABORTED = 13
ERRNO_IO = 29
ERRNO_NOTSOCK = 57
FILETYPE_SOCKET_STREAM = 6
FIRST_SOCKET_FD = 1000  # far above stdio and the preopened directories


def run(config: dict[str, Any]) -> int:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    sockets: dict[int, socket.socket] = {}
    env = dict(config.get("env", {}))
    if "listen" in config:
        host, port = config["listen"]
        listener = socket.create_server((host, port))
        sockets[FIRST_SOCKET_FD] = listener
        env["STOCKADE_LISTEN_KV"] = str(FIRST_SOCKET_FD)
        print(f"kv_support: listening on {listener.getsockname()[1]}", file=sys.stderr, flush=True)
    if "connect" in config:
        host, port = config["connect"]
        sockets[FIRST_SOCKET_FD] = socket.create_connection((host, port), timeout=30)
        env["STOCKADE_CONNECT_KV"] = str(FIRST_SOCKET_FD)

    wasi = wasmtime.WasiConfig()
    wasi.argv = [config["name"], *config.get("args", [])]
    wasi.env = sorted(env.items())
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    stdio = {0: sys.stdin.buffer, 1: sys.stdout.buffer, 2: sys.stderr.buffer}
    next_fd = [FIRST_SOCKET_FD + 1]
    fail_accepts = [int(config.get("fail_accepts", 0))]

    def memory(caller: wasmtime.Caller) -> wasmtime.Memory:
        mem = caller.get("memory")
        assert isinstance(mem, wasmtime.Memory)
        return mem

    def iovecs(caller: wasmtime.Caller, ptr: int, count: int) -> list[tuple[int, int]]:
        raw = memory(caller).read(caller, ptr, ptr + 8 * count)
        return [struct.unpack_from("<II", raw, 8 * i) for i in range(count)]

    def put_u32(caller: wasmtime.Caller, ptr: int, value: int) -> None:
        memory(caller).write(caller, struct.pack("<I", value), ptr)

    def do_read(caller: wasmtime.Caller, fd: int, iov: int, count: int, out: int) -> int:
        sock = sockets[fd]
        total = 0
        for base, length in iovecs(caller, iov, count):
            if length == 0:
                continue
            try:
                data = sock.recv(length)
            except OSError:
                return ERRNO_IO
            memory(caller).write(caller, data, base)
            total += len(data)
            break  # one recv per call, like a POSIX read
        put_u32(caller, out, total)
        return ERRNO_SUCCESS

    def do_write(caller: wasmtime.Caller, fd: int, iov: int, count: int, out: int) -> int:
        sock = sockets[fd]
        total = 0
        for base, length in iovecs(caller, iov, count):
            try:
                sock.sendall(bytes(memory(caller).read(caller, base, base + length)))
            except OSError:
                return ERRNO_IO
            total += length
        put_u32(caller, out, total)
        return ERRNO_SUCCESS

    def fd_read(caller: wasmtime.Caller, fd: int, iov: int, count: int, out: int) -> int:
        if fd in sockets:
            return do_read(caller, fd, iov, count, out)
        if fd != 0:
            return ERRNO_BADF
        total = 0
        for base, length in iovecs(caller, iov, count):
            if length:
                data = stdio[0].read1(length)
                memory(caller).write(caller, data, base)
                total = len(data)
                break
        put_u32(caller, out, total)
        return ERRNO_SUCCESS

    def fd_write(caller: wasmtime.Caller, fd: int, iov: int, count: int, out: int) -> int:
        if fd in sockets:
            return do_write(caller, fd, iov, count, out)
        if fd not in (1, 2):
            return ERRNO_BADF
        total = 0
        for base, length in iovecs(caller, iov, count):
            stdio[fd].write(bytes(memory(caller).read(caller, base, base + length)))
            total += length
        stdio[fd].flush()
        put_u32(caller, out, total)
        return ERRNO_SUCCESS

    def fd_close(caller: wasmtime.Caller, fd: int) -> int:
        if fd in sockets:
            sockets.pop(fd).close()
            return ERRNO_SUCCESS
        return ERRNO_BADF

    def fd_fdstat_get(caller: wasmtime.Caller, fd: int, out: int) -> int:
        if fd in sockets:
            # fdstat: filetype u8, flags u16 (at 2), rights base u64 (8), inheriting u64 (16)
            stat = struct.pack("<BxHxxxxQQ", FILETYPE_SOCKET_STREAM, 0, 2**64 - 1, 2**64 - 1)
            memory(caller).write(caller, stat, out)
            return ERRNO_SUCCESS
        if fd in stdio:  # filetype character_device = 2
            memory(caller).write(caller, struct.pack("<BxHxxxxQQ", 2, 0, 2**64 - 1, 0), out)
            return ERRNO_SUCCESS
        return ERRNO_BADF

    def sock_accept(caller: wasmtime.Caller, fd: int, flags: int, out: int) -> int:
        listener = sockets.get(fd)
        if listener is None:
            return ERRNO_BADF
        if fd != FIRST_SOCKET_FD or "listen" not in config:
            return ERRNO_NOTSOCK
        if fail_accepts[0] > 0:
            fail_accepts[0] -= 1
            return ERRNO_CONNABORTED
        try:
            conn, _ = listener.accept()
        except OSError:
            return ERRNO_IO
        new = next_fd[0]
        next_fd[0] += 1
        sockets[new] = conn
        put_u32(caller, out, new)
        return ERRNO_SUCCESS

    def sock_recv(
        caller: wasmtime.Caller, fd: int, iov: int, count: int, flags: int, out: int, out_flags: int
    ) -> int:
        if fd not in sockets:
            return ERRNO_NOTSOCK
        memory(caller).write(caller, b"\0\0", out_flags)
        return do_read(caller, fd, iov, count, out)

    def sock_send(caller: wasmtime.Caller, fd: int, iov: int, count: int, flags: int, out: int) -> int:
        if fd not in sockets:
            return ERRNO_NOTSOCK
        return do_write(caller, fd, iov, count, out)

    def sock_shutdown(caller: wasmtime.Caller, fd: int, how: int) -> int:
        sock = sockets.get(fd)
        if sock is None:
            return ERRNO_NOTSOCK
        # sdflags: rd = 1, wr = 2
        mode = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}.get(how)
        if mode is None:
            return 28  # inval
        try:
            sock.shutdown(mode)
        except OSError:
            return ERRNO_IO
        return ERRNO_SUCCESS

    i32 = wasmtime.ValType.i32()

    def define(name: str, params: int, func: Any) -> None:
        ty = wasmtime.FuncType([i32] * params, [i32])
        linker.define_func(WASI, name, ty, func, access_caller=True)

    define("fd_read", 4, fd_read)
    define("fd_write", 4, fd_write)
    define("fd_close", 1, fd_close)
    define("fd_fdstat_get", 2, fd_fdstat_get)
    define("sock_accept", 3, sock_accept)
    define("sock_recv", 6, sock_recv)
    define("sock_send", 5, sock_send)
    define("sock_shutdown", 2, sock_shutdown)

    module = wasmtime.Module.from_file(engine, config["wasm"])
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    try:
        start(store)
    except wasmtime.ExitTrap as exit_trap:
        return int(exit_trap.code)
    return 0


if __name__ == "__main__":
    sys.exit(run(json.loads(sys.argv[1])))
