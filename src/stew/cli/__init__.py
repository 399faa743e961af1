"""The ``stew`` command line: one module per command group, registered on :data:`app` when imported.

``base`` holds the app, its one-line errors and the shared options; ``data``, ``train`` and
``experiments`` hold the commands. Bad input exits with code 2 and one line naming the problem.
"""

from __future__ import annotations

import sys

# Importing a module registers its commands, in the order `stew --help` lists them.
# isort: off
from stew.cli import data, train, experiments  # noqa: F401
# isort: on
from stew.cli.base import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    """Run the command line on ``sys.argv`` (the ``stew`` script and ``python -m stew``)."""
    sys.exit(app())
