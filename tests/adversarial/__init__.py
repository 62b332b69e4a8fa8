"""The adversarial suite (issue 13). A package, so that its conftest.py is
imported as ``adversarial.conftest`` and never shadows ``tests/conftest.py``
(which test modules import as ``conftest``); support modules are imported
as ``adversarial.relay`` and ``adversarial.canary`` (``tests/`` is on
``sys.path``, pytest's default ``prepend`` import mode)."""
