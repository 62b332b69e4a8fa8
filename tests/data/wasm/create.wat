;; Tries to create the file "created.txt" for writing in the first preopened
;; directory (fd 3) and exits with the WASI errno of path_open (0: created).
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "created.txt")
  (func (export "_start")
    (call $proc_exit
      (call $path_open
        (i32.const 3)          ;; dirfd: the first preopen
        (i32.const 0)          ;; lookupflags
        (i32.const 16)         ;; path
        (i32.const 11)         ;; path length
        (i32.const 1)          ;; oflags: O_CREAT
        (i64.const 64)         ;; rights: fd_write
        (i64.const 0)          ;; inheriting rights
        (i32.const 0)          ;; fdflags
        (i32.const 8)))))      ;; the new fd goes here
