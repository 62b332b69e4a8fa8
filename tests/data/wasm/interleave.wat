;; Writes the 4-byte little-endian counters 0..4999 alternately to stdout and
;; to stderr (one fd_write each): the order of each stream is checkable.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $put (param $fd i32) (param $n i32)
    (i32.store (i32.const 64) (local.get $n))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $i i32)
    (loop $next
      (call $put (i32.const 1) (local.get $i))
      (call $put (i32.const 2) (local.get $i))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 5000))))))
