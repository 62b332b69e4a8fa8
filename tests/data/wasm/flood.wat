;; Writes 64 KiB chunks of "x" to stdout forever.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    ;; the chunk: 64 KiB of "x" in the second page
    (memory.fill (i32.const 65536) (i32.const 0x78) (i32.const 65536))
    ;; iovec at 0: {buf = 65536, len = 65536}; nwritten at 8
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $forever))))
