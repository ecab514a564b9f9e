"""`distinit status` and `distinit stamps`: which stages are stale, and the stamp files make depends on."""

from __future__ import annotations

import click

from pipeline.cli import main


def _spec_options(command):
    """The Makefile's variables, as options shared by `status` and `stamps`."""
    options = [
        click.option("--stamps", "stamps_dir", default=None, help="Stamp folder (default .stamps/<data>)."),
        click.option("--data", default="demo", show_default=True, help="Stage-one dataset (see `distinit datasets`)."),
        click.option("--root", default=None, help="Stage-one dataset folder (not needed for demo)."),
        click.option("--demo-dir", default="data/demo", show_default=True),
        click.option("--demo-config", default="configs/demo-data.yaml", show_default=True),
        click.option("--demo-set", multiple=True, metavar="KEY=VALUE"),
        click.option("--extract-config", default="configs/extract.yaml", show_default=True),
        click.option("--extract-set", multiple=True, metavar="KEY=VALUE"),
        click.option("--targets-root", default="targets", show_default=True),
        click.option("--distill-config", default=None, help="Default: configs/demo-distill.yaml for demo, else configs/distill.yaml."),
        click.option("--distill-set", multiple=True, metavar="KEY=VALUE"),
        click.option("--distill-nproc", default="1", show_default=True,
                     help="Processes per node distill runs as under torchrun (make's NPROC); part of its key."),
        click.option("--torchrun-args", default="",
                     help="make's TORCHRUN_ARGS: its --nnodes N multiplies --distill-nproc."),
        click.option("--eval-config", default=None, help="Default: configs/demo-eval.yaml for demo, else configs/eval.yaml."),
        click.option("--eval-set", multiple=True, metavar="KEY=VALUE"),
        click.option("--eval-root", default=None, help="HMDB-51 video folder for the eval stage."),
        click.option("--inits", default=None, help="Default: scratch,runs/demo/distill for demo, else "
                     "scratch,inflated:efficientnet_lite0,runs/distill (as make)."),
        click.option("--seeds", default="0,1,2", show_default=True),
        click.option("--results", "results_dir", default=None, help="Comparison folder (default results/<data>)."),
        click.option("--until", type=click.Choice(["demo-data", "extract", "distill", "eval"]), default="eval",
                     show_default=True, help="Last stage to consider."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _plan(options: dict):
    from pipeline.errors import ConfigError
    from pipeline.stages import PipelineSpec, distill_process_count, stage_plan

    data = options["data"]
    try:
        seeds = tuple(int(seed) for seed in options["seeds"].split(",") if seed.strip())
    except ValueError:
        raise ConfigError(f"--seeds {options['seeds']!r} is not a comma-separated list of integers") from None
    default_inits = "scratch,runs/demo/distill" if data == "demo" else "scratch,inflated:efficientnet_lite0,runs/distill"
    spec = PipelineSpec(
        stamps_dir=options["stamps_dir"] or f".stamps/{data}",
        data=data, root=options["root"], demo_dir=options["demo_dir"], demo_config=options["demo_config"],
        demo_set=options["demo_set"], extract_config=options["extract_config"], extract_set=options["extract_set"],
        targets_root=options["targets_root"],
        distill_config=options["distill_config"] or ("configs/demo-distill.yaml" if data == "demo" else "configs/distill.yaml"),
        distill_set=options["distill_set"],
        distill_processes=distill_process_count(options["distill_nproc"], options["torchrun_args"]),
        eval_config=options["eval_config"] or ("configs/demo-eval.yaml" if data == "demo" else "configs/eval.yaml"),
        eval_set=options["eval_set"], eval_root=options["eval_root"],
        inits=tuple(init.strip() for init in (options["inits"] or default_inits).split(",") if init.strip()), seeds=seeds,
        results_dir=options["results_dir"],
    )
    until = options["until"]
    if until == "eval" and data != "demo" and not options["eval_root"]:
        until = "distill"  # no labeled data named: the eval stage is not part of this pipeline yet
    return spec, stage_plan(spec, until=until)


@main.command()
@_spec_options
def status(**options) -> None:
    """Print each stage: up to date, stale (and what changed) or missing."""
    from pipeline.stamps import stage_status

    spec, plan = _plan(options)
    for entry in stage_status(plan, spec.stamps_dir):
        reasons = f": {'; '.join(entry.reasons)}" if entry.reasons else ""
        click.echo(f"{entry.stage:<10} {entry.state}{reasons}  [key {entry.key}]")


@main.command()
@_spec_options
def stamps(**options) -> None:
    """Rewrite the stamp file of each stage whose key changed (make's dependencies; see pipeline/stamps.py)."""
    from pipeline.stamps import update_stamps

    spec, plan = _plan(options)
    changed = update_stamps(plan, spec.stamps_dir)
    if changed:
        click.echo(f"inputs changed for: {', '.join(changed)}")
