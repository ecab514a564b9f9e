"""Stage one on the command line: `distinit extract`, `verify`, `inspect`, `teachers`."""

from __future__ import annotations

import click
import yaml

from distinit.pipeline.cli import main


def _enable_offline(context: click.Context, parameter: click.Parameter, value: bool) -> None:
    if value:
        from distinit.pipeline.weights.download import enable_offline

        enable_offline()


# Eager, so it takes effect while the options are parsed, before the command builds anything.
offline_option = click.option(
    "--offline", is_flag=True, expose_value=False, is_eager=True, callback=_enable_offline,
    help="Never download weights: use only files already cached or given (also DISTINIT_OFFLINE=1).",
)


def _teacher_options(weights: tuple[str, ...], options: tuple[str, ...]) -> dict[str, dict]:
    """`--weights NAME=FILE` and `--teacher-option NAME.KEY=VALUE` -> {teacher: {option: value}}."""
    from distinit.pipeline.errors import ConfigError

    result: dict[str, dict] = {}
    for pair in weights:
        name, _, path = pair.partition("=")
        if not path:
            raise ConfigError(f"--weights {pair!r} is not of the form INSTANCE=FILE (a teacher kind, or a name given in --teachers)")
        result.setdefault(name, {})["weights"] = path
    for pair in options:
        key, _, text = pair.partition("=")
        name, _, option = key.rpartition(".")
        if not (name and option and text):
            raise ConfigError(f"--teacher-option {pair!r} is not of the form INSTANCE.OPTION=VALUE")
        result.setdefault(name, {})[option] = yaml.safe_load(text)
    return result


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config (configs/extract.yaml).")
@click.option("--data", default=None, help="Dataset adapter (see `distinit datasets`).")
@click.option("--root", default=None, help="Dataset root folder.")
@click.option("--splits", "splits_dir", default=None, help="Split-file folder (HMDB-51, UCF-101).")
@click.option("--annotations", default=None, help="Kinetics annotation CSV file or folder.")
@click.option("--teachers", default=None,
              help="Comma-separated KIND or INSTANCE=KIND (see `distinit teachers`), e.g. "
              "r18=imagenet-torchvision,r50=imagenet-torchvision.")
@click.option("--weights", multiple=True, metavar="INSTANCE=FILE", help="Weights file for a teacher instance.")
@click.option("--teacher-option", multiple=True, metavar="INSTANCE.OPTION=VALUE", help="Option for a teacher instance.")
@click.option("--frames-per-second", type=float, default=None, help="Teacher frames per second of video (default 2).")
@click.option("--max-frames-per-video", type=int, default=None, help="Cap on teacher frames per video.")
@click.option("--shard-count", type=int, default=None, help="Number of HDF5 shards (default 16).")
@click.option("--shard", "shard_part", default=None, metavar="i/N", help="Write only shards with index % N == i.")
@click.option("--finalize", is_flag=True, help="Only write manifest.json once every shard exists.")
@click.option("--batch-size", type=int, default=None)
@click.option("--workers", type=int, default=None, help="Decode worker processes (0: in the main process).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
@click.option("--out", default=None, help="Targets root (default targets/).")
@click.option("--max-failure-rate", type=float, default=None, help="Exit non-zero above this fraction of failed videos.")
@click.option("--limit", type=int, default=None, help="Only the first N videos (quick trials).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other config option.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@offline_option
def extract(config_path, shard_part, finalize, weights, teacher_option, overrides, no_progress, **options) -> None:
    """Run the teachers over sampled frames and write targets/<data>/<key>/shard-*.h5 + manifest.json."""
    from distinit.extract.config import ExtractConfig, parse_shard_part
    from distinit.extract.run import finalize as finalize_targets, prepare, run_extraction
    from distinit.pipeline.config import load_config, parse_overrides

    options = {**parse_overrides(overrides), **{key: value for key, value in options.items() if value is not None}}
    if isinstance(options.get("teachers"), str):
        options["teachers"] = tuple(name.strip() for name in options["teachers"].split(",") if name.strip())
    teacher_options = _teacher_options(weights, teacher_option)
    if teacher_options:
        options["teacher_options"] = teacher_options
    config = load_config(ExtractConfig, config_path, options)
    part = parse_shard_part(shard_part)
    if finalize:
        plan = prepare(config)
        click.echo(f"manifest written: {finalize_targets(config, plan.targets_dir)}")
        return
    report = run_extraction(config, part, show_progress=not no_progress)
    rate = report.rows / report.seconds if report.seconds else 0.0
    click.echo(
        f"{report.targets_dir}: wrote shards {report.shards_written or 'none'} "
        f"({len(report.shards_skipped)} already done), {report.videos} videos, {report.rows} teacher frames "
        f"in {report.seconds:.1f} s ({rate:.1f} frames/s), {len(report.failures)} videos skipped"
    )
    if report.shards_busy:
        held = ", ".join(f"{index} ({holder})" for index, holder in report.shards_busy.items())
        click.echo(f"shards left to the writers holding them: {held}; once they finish, run --finalize")
    elif report.manifest is None:
        click.echo("this part is done; once every part is, run the same command with --finalize")


@main.command()
@click.argument("targets_dir", type=click.Path(file_okay=False))
def verify(targets_dir: str) -> None:
    """Check a targets folder: checksums, row counts, NaN/inf, manifest consistency (exit 1 if bad)."""
    from distinit.pipeline.shards import verify as verify_targets
    from distinit.pipeline.shards.verify import record_verified

    problems = verify_targets(targets_dir)
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        raise SystemExit(1)
    # Training starts then stat the files against this record instead of reading every shard again.
    record_verified(targets_dir)
    click.echo(f"{targets_dir}: ok")


@main.command("inspect")
@click.argument("targets_dir", type=click.Path(file_okay=False))
@click.option("--video", "video_id", default=None, help="Show this video's teacher frames over time.")
@click.option("--top-k", type=int, default=5)
def inspect_command(targets_dir: str, video_id: str | None, top_k: int) -> None:
    """Summarise a targets folder (rows, per-teacher summaries, a video's top classes over time)."""
    from distinit.pipeline.shards import inspect as inspect_targets

    for line in inspect_targets(targets_dir, video_id=video_id, top_k=top_k):
        click.echo(line)


@main.command()
@click.option("--teacher", "teacher_name", default=None, help="Show only this teacher.")
@click.option("--option", "option_pairs", multiple=True, metavar="OPTION=VALUE",
              help="With --teacher: list the weights these options would use (e.g. model=resnet18).")
@click.option("--fetch", is_flag=True,
              help="Download every weights file the extract config's teachers (and --inits) need into the caches, on a "
                   "machine with internet, so compute nodes can run --offline.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="With --fetch: the extract config whose teachers to fetch (configs/extract.yaml).")
@click.option("--teachers", "teacher_list", default=None, help="With --fetch: these teacher entries instead.")
@click.option("--weights", multiple=True, metavar="INSTANCE=FILE", help="With --fetch: a weights file for an instance.")
@click.option("--teacher-option", multiple=True, metavar="INSTANCE.OPTION=VALUE", help="With --fetch: an instance option.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="With --fetch: any other extract option.")
@click.option("--inits", default=None, metavar="INIT,...",
              help="With --fetch: also the 2D weights of these eval inits (inflated:resnet18, ...).")
@offline_option
def teachers(teacher_name: str | None, option_pairs: tuple[str, ...], fetch: bool, config_path, teacher_list, weights,
             teacher_option, overrides, inits) -> None:
    """List the registered teachers, their options, and where each one's weights come from (and whether they are
    here already). Touches no network and imports no optional package that is missing. --fetch instead downloads
    what a run will need (the extract config's teacher instances, --inits' 2D weights) and says where it is."""
    from distinit.extract.teachers import list_teachers, teacher_options
    from distinit.extract.teachers.registry import TEACHERS
    from distinit.pipeline.errors import ConfigError

    if fetch:
        _fetch(config_path, teacher_list, weights, teacher_option, overrides, inits)
        return

    if teacher_name is not None and teacher_name not in TEACHERS:
        raise ConfigError(f"unknown teacher {teacher_name!r}; known teachers: {', '.join(list_teachers())}")
    if option_pairs and teacher_name is None:
        raise ConfigError("--option needs --teacher NAME: options belong to one teacher")
    chosen = _teacher_options((), tuple(f"{teacher_name}.{pair}" for pair in option_pairs)).get(teacher_name, {})
    for name in [teacher_name] if teacher_name is not None else list_teachers():
        options = teacher_options(name)
        unknown = sorted(set(chosen) - set(options))
        if unknown:
            known = ", ".join(options)
            raise ConfigError(f"teacher {name!r} has no option {', '.join(unknown)}; its options are: {known}")
        options.update(chosen)
        click.echo(f"{name:30s} {', '.join(f'{key}={value!r}' for key, value in options.items())}")
        for line in _weights_lines(TEACHERS[name], options):
            click.echo(f"    {line}")


def _fetch(config_path, teacher_list, weights, teacher_option, overrides, inits) -> None:
    """`distinit teachers --fetch`: build the config's teachers (downloading their weights), then --inits' 2D weights."""
    from distinit.extract.config import ExtractConfig
    from distinit.extract.fetch import fetch_teachers
    from distinit.pipeline.config import load_config, parse_overrides

    options = parse_overrides(overrides)
    if teacher_list:
        options["teachers"] = tuple(name.strip() for name in teacher_list.split(",") if name.strip())
    teacher_options = _teacher_options(weights, teacher_option)
    if teacher_options:
        options["teacher_options"] = teacher_options
    for line in fetch_teachers(load_config(ExtractConfig, config_path, options)):
        click.echo(line)
    for init in (init.strip() for init in (inits or "").split(",") if init.strip()):
        if init.startswith("inflated:"):
            from distinit.evaluate.inflate import fetch_2d_weights

            click.echo(f"{init}: ready (2D weights sha256 {fetch_2d_weights(init[len('inflated:'):])[:12]})")


def _weights_lines(teacher_class, options: dict) -> list[str]:
    """A teacher's weights sources as lines: what, its state, where it comes from and where it is kept."""
    from distinit.pipeline.weights.download import presence

    try:
        sources = teacher_class.weights_sources(**options)
    except Exception as error:  # one teacher failing to list (a missing package, a bad option) must not stop the rest
        reason = " ".join(str(error).split()) or type(error).__name__
        return [f"weights: cannot list them ({reason})"]
    if not sources:
        return ["weights: not listed by this teacher"]
    lines = []
    for source in sources:
        lines.append(f"weights: {source.description}: {presence(source)}")
        lines.append(f"  from {source.origin}")
        where = source.local_path or "not known here (its package or framework decides)"
        lines.append(f"  at   {where}")
    return lines
