"""Sub-commands of the ``stockade`` CLI, one module per area.

Each module defines one click command or group and imports its heavy
dependencies inside the command functions. ``stockade.cli`` loads a module
only when its command runs (or ``--help`` lists it) and is the one error
boundary: commands raise a StockadeError or return an exit status
(``stockade.errors.ExitStatus`` / ``WorkloadExit``), and never exit.
"""
