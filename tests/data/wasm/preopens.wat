;; Lists the guest's preopened directories: for fd = 3, 4, ... until
;; fd_prestat_get fails, prints the directory name followed by "\n".
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name"
    (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $fd i32)
    (local $len i32)
    (local.set $fd (i32.const 3))
    (block $done
      (loop $next
        ;; prestat at 0: tag u8 @0, name length u32 @4
        (br_if $done (call $fd_prestat_get (local.get $fd) (i32.const 0)))
        (local.set $len (i32.load (i32.const 4)))
        (br_if $done (i32.gt_u (local.get $len) (i32.const 4096)))
        (br_if $done
          (call $fd_prestat_dir_name (local.get $fd) (i32.const 1024) (local.get $len)))
        (i32.store8 (i32.add (i32.const 1024) (local.get $len)) (i32.const 10))
        ;; iovec at 16: {buf = 1024, len = name length + 1}; nwritten at 24
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (i32.add (local.get $len) (i32.const 1)))
        (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br $next)))))
