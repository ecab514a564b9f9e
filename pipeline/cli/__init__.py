"""The `distinit` command line (also `python -m distinit.pipeline`).

Each command group lives in its own module and registers itself on `main`. Library code logs;
only the CLI prints. A `DistinitError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import logging

import click

from distinit.pipeline.errors import DistinitError


class _Group(click.Group):
    """Turns the project's own errors into a one-line message and a non-zero exit."""

    def invoke(self, context: click.Context):
        try:
            return super().invoke(context)
        except DistinitError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="distinit")
def main(verbose: int) -> None:
    """DistInit: learn video representations from unlabeled video by distilling 2D image teachers."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# Command modules register themselves on `main`; imported last so `main` exists.
from distinit.pipeline.cli import (  # noqa: E402,F401
    data_commands, demo_commands, distill_commands, eval_commands, extract_commands, prepare_commands, stage_commands,
    video_commands,
)
