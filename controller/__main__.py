"""`python -m controller ARGS` is `airun operator ARGS`."""

from controller.cli.main import operator

operator(prog_name="python -m controller")
