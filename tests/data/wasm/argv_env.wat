;; Prints its WASI arguments, one per line, then a line "--", then its
;; environment ("KEY=VALUE"), one entry per line (each NUL terminator of the
;; WASI string buffers is turned into "\n").
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 32) "--\n")
  ;; Layout: 0..31 scratch (iovec, counts), 4096.. pointer array, 65536.. strings.
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $nul_to_newline (param $ptr i32) (param $len i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (if (i32.eqz (i32.load8_u (local.get $ptr)))
          (then (i32.store8 (local.get $ptr) (i32.const 10))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $next))))
  (func (export "_start")
    (local $size i32)
    ;; arguments
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (local.set $size (i32.load (i32.const 20)))
    (drop (call $args_get (i32.const 4096) (i32.const 65536)))
    (call $nul_to_newline (i32.const 65536) (local.get $size))
    (call $write (i32.const 65536) (local.get $size))
    (call $write (i32.const 32) (i32.const 3))
    ;; environment
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (local.set $size (i32.load (i32.const 20)))
    (drop (call $environ_get (i32.const 4096) (i32.const 65536)))
    (call $nul_to_newline (i32.const 65536) (local.get $size))
    (call $write (i32.const 65536) (local.get $size))))
