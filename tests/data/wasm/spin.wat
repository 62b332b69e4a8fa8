;; Never ends: an empty infinite loop (only epoch interruption stops it).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever
      (br $forever))))
