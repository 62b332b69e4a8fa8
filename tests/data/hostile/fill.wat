;; Creates files "aaa", "aab", ... in the first preopen (fd 3), writing
;; CHUNKS chunks of 64 KiB to each (CHUNKS is replaced by the tests), until a
;; WASI call fails: then exits 1 (as a program that stops on a write error).
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "aaa")
  (func $next_name (local $i i32)
    ;; increment the base-26 name at 16..18
    (local.set $i (i32.const 18))
    (block $done
      (loop $carry
        (i32.store8 (local.get $i) (i32.add (i32.load8_u (local.get $i)) (i32.const 1)))
        (br_if $done (i32.le_u (i32.load8_u (local.get $i)) (i32.const 122)))
        (i32.store8 (local.get $i) (i32.const 97))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br_if $carry (i32.ge_u (local.get $i) (i32.const 16)))
        (call $proc_exit (i32.const 2)))))
  (func (export "_start") (local $fd i32) (local $n i32)
    ;; iovec at 0: 64 KiB of memory from 65536
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $files
      (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 3)
            (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 8))
        (then (call $proc_exit (i32.const 1))))
      (local.set $fd (i32.load (i32.const 8)))
      (local.set $n (i32.const CHUNKS))
      (block $written
        (loop $chunks
          (br_if $written (i32.eqz (local.get $n)))
          (if (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 12))
            (then (call $proc_exit (i32.const 1))))
          (if (i32.eqz (i32.load (i32.const 12))) (then (call $proc_exit (i32.const 1))))
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br $chunks)))
      (drop (call $fd_close (local.get $fd)))
      (call $next_name)
      (br $files))))
