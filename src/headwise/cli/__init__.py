"""The `headwise` command: a thin layer over `import headwise as hw`. Arguments are checked before the model
loads, and torch is imported only by a command that runs, so `--help` is instant. Help lists the commands in
the order their modules register them: needle tests first, then the applications."""

# isort: off
from headwise.cli import needles  # noqa: F401
from headwise.cli import ruler  # noqa: F401
from headwise.cli import apps  # noqa: F401
from headwise.cli import report  # noqa: F401

# isort: on
from headwise.cli.common import app

__all__ = ["app"]
