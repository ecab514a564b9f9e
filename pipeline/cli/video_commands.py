"""`distinit probe`: what ffmpeg sees in a video file."""

from __future__ import annotations

import json

import click

from distinit.pipeline.cli import main


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
def probe(paths: tuple[str, ...]) -> None:
    """Print duration, fps, frame count, size and codec of each video as a JSON line."""
    import dataclasses

    from distinit.pipeline.video import probe as probe_video

    for path in paths:
        click.echo(json.dumps(dataclasses.asdict(probe_video(path)), default=str))
