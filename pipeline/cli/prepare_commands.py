"""`distinit prepare`: re-encode a dataset's videos for stage two (pipeline/prepared/)."""

from __future__ import annotations

import click

from distinit.pipeline.cli import main


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config (configs/prepare.yaml).")
@click.option("--data", default=None, help="Dataset adapter (see `distinit datasets`).")
@click.option("--root", default=None, help="Dataset root folder.")
@click.option("--splits", "splits_dir", default=None, help="Split-file folder (HMDB-51, UCF-101).")
@click.option("--annotations", default=None, help="Kinetics annotation CSV file or folder.")
@click.option("--out", default=None, help="Prepared-videos root (default prepared/).")
@click.option("--short-side", type=int, default=None, help="Short side of the copies in pixels (default 128; never upscaled).")
@click.option("--gop", type=int, default=None, help="Frames from one keyframe to the next (default 16).")
@click.option("--workers", type=int, default=None, help="Encoders at once, one thread each (default: every core).")
@click.option("--limit", type=int, default=None, help="Only the first N videos (as extract's --limit).")
@click.option("--shard", "shard_part", default=None, metavar="i/N", help="Prepare only the videos of part i of N.")
@click.option("--finalize", is_flag=True, help="Only seal the folder (videos.jsonl, manifest.json) once every part is done.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other config option (crf, preset, tune, split, ...).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def prepare(config_path, shard_part, finalize, overrides, no_progress, **options) -> None:
    """Re-encode each video once (short side 128, a keyframe every 16 frames, x264 fastdecode) into
    prepared/<data>/<key>/."""
    from distinit.extract.config import parse_shard_part
    from distinit.pipeline.config import load_config, parse_overrides
    from distinit.pipeline.prepared import PrepareConfig, finalize as finalize_folder, run_prepare

    options = {**parse_overrides(overrides), **{key: value for key, value in options.items() if value is not None}}
    config = load_config(PrepareConfig, config_path, options)
    part = parse_shard_part(shard_part)
    if finalize:
        click.echo(f"manifest written: {finalize_folder(config)}")
        return
    report = run_prepare(config, part, show_progress=not no_progress)
    click.echo(
        f"{report.folder}: prepared {report.written} videos ({report.kept} already done) of {report.videos} "
        f"in {report.seconds:.1f} s, {len(report.skipped)} skipped"
    )
    if report.manifest is None:
        click.echo("this part is done; once every part is, run the same command with --finalize")
    else:
        click.echo(f"manifest written: {report.manifest}")
