"""``python -m stockade`` is the ``stockade`` command."""

from stockade.cli import main

main(prog_name="stockade")
