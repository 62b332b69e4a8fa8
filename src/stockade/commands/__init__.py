"""Sub-command groups of the ``stockade`` CLI, one module per area.

Each module defines one click group and imports its heavy dependencies
inside the command functions, so that ``stockade --help`` and ``stockade
run`` stay fast. ``stockade.cli`` registers them.
"""
