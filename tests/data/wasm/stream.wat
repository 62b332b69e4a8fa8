;; Streaming probe: prints "first\n", then keeps the CPU busy for 1.5 s (a
;; loop that polls the monotonic clock, so it runs Wasm code the whole time
;; rather than blocking in the host), then prints "second\n".
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock_time_get (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "first\n")
  (data (i32.const 32) "second\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $now (result i64)
    (drop (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 48)))
    (i64.load (i32.const 48)))
  (func (export "_start")
    (local $deadline i64)
    (local $spins i64)
    (call $write (i32.const 16) (i32.const 6))
    (local.set $deadline (i64.add (call $now) (i64.const 1500000000)))
    (loop $busy
      (local.set $spins (i64.add (local.get $spins) (i64.const 1)))
      (br_if $busy (i64.lt_u (call $now) (local.get $deadline))))
    (call $write (i32.const 32) (i32.const 7))))
