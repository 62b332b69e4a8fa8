;; A valid module that is not a WASI command: it exports no _start.
(module
  (memory (export "memory") 1)
  (func (export "main") (result i32)
    (i32.const 0)))
