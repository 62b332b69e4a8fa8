"""``python -m stockade`` is the ``stockade`` command (through the client
agent when one runs: :mod:`stockade.launcher`)."""

from stockade.launcher import main

main(prog_name="stockade")
