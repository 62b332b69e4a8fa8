;; Prints "sleeping\n", then blocks in the host for 30 s: poll_oneoff with a
;; single relative clock subscription (a call that epoch interruption cannot
;; stop), then prints "awake\n".
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "sleeping\n")
  (data (i32.const 32) "awake\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $write (i32.const 16) (i32.const 9))
    ;; subscription (48 bytes) at 64: userdata u64 @+0, tag u8 @+8 (0 = clock),
    ;; clock id u32 @+16 (1 = monotonic), timeout u64 @+24 (ns),
    ;; precision u64 @+32, flags u16 @+40 (0 = relative)
    (i64.store (i32.const 64) (i64.const 42))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 30000000000))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    ;; one event (32 bytes) out at 128, number of events at 192
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 192)))
    (call $write (i32.const 32) (i32.const 6))))
