"""`distinit status` and `distinit stamps`: which stages are stale, and the stamp files make depends on."""

from __future__ import annotations

import dataclasses

import click

from distinit.pipeline.cli import main
from distinit.pipeline.stages.graph import STAGES


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
        click.option("--prepare", "use_prepared", is_flag=True,
                     help="make's PREPARE=1: distill reads the prepare stage's re-encoded copies (part of its key)."),
        click.option("--prepare-config", default="configs/prepare.yaml", show_default=True),
        click.option("--prepare-set", multiple=True, metavar="KEY=VALUE"),
        click.option("--prepared-root", default="prepared", show_default=True),
        click.option("--distill-config", default=None, help="Default: configs/demo-distill.yaml for demo, else configs/distill.yaml."),
        click.option("--distill-set", multiple=True, metavar="KEY=VALUE"),
        click.option("--distill-nproc", default="1", show_default=True,
                     help="Processes per node distill runs as under torchrun (make's NPROC); part of its key."),
        click.option("--torchrun-args", default="",
                     help="make's TORCHRUN_ARGS: its --nnodes N multiplies --distill-nproc."),
        click.option("--eval-config", default=None, help="Default: configs/demo-eval.yaml for demo, else configs/eval.yaml."),
        click.option("--eval-set", multiple=True, metavar="KEY=VALUE"),
        click.option("--eval-root", default=None, help="HMDB-51 video folder (make's HMDB_ROOT): compare and eval-hmdb."),
        click.option("--ucf-root", default=None, help="UCF-101 video folder (make's UCF_ROOT): eval-ucf."),
        click.option("--init", default=None, help="The init eval-hmdb and eval-ucf score (make's INIT; default: the "
                     "distill output)."),
        click.option("--inits", default=None, help="Default: scratch,runs/demo/distill for demo, else "
                     "scratch,inflated:efficientnet_lite0,runs/distill (as make)."),
        click.option("--seeds", default="0,1,2", show_default=True),
        click.option("--results", "results_dir", default=None, help="Comparison folder (default results/<data>)."),
        click.option("--until", type=click.Choice(STAGES), default="compare", show_default=True,
                     help="`stamps`: the stage to bring up to date (with every stage it reads)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _spec(options: dict):
    """The PipelineSpec of the options; INIT and INITS default to the distill output of the distill config."""
    from distinit.pipeline.errors import ConfigError
    from distinit.pipeline.stages.graph import PipelineSpec, distill_output_folder, distill_process_count

    data = options["data"]
    try:
        seeds = tuple(int(seed) for seed in options["seeds"].split(",") if seed.strip())
    except ValueError:
        raise ConfigError(f"--seeds {options['seeds']!r} is not a comma-separated list of integers") from None
    demo = data == "demo"
    spec = PipelineSpec(
        stamps_dir=options["stamps_dir"] or f".stamps/{data}",
        data=data, root=options["root"], demo_dir=options["demo_dir"], demo_config=options["demo_config"],
        demo_set=options["demo_set"], extract_config=options["extract_config"], extract_set=options["extract_set"],
        targets_root=options["targets_root"], prepare=options["use_prepared"],
        prepare_config=options["prepare_config"], prepare_set=options["prepare_set"],
        prepared_root=options["prepared_root"],
        distill_config=options["distill_config"] or ("configs/demo-distill.yaml" if demo else "configs/distill.yaml"),
        distill_set=options["distill_set"],
        distill_processes=distill_process_count(options["distill_nproc"], options["torchrun_args"]),
        eval_config=options["eval_config"] or ("configs/demo-eval.yaml" if demo else "configs/eval.yaml"),
        eval_set=options["eval_set"], eval_root=options["eval_root"], ucf_root=options["ucf_root"],
        seeds=seeds, results_dir=options["results_dir"],
    )
    distill_out = distill_output_folder(spec)
    default_inits = f"scratch,{distill_out}" if demo else f"scratch,inflated:efficientnet_lite0,{distill_out}"
    inits = tuple(init.strip() for init in (options["inits"] or default_inits).split(",") if init.strip())
    return dataclasses.replace(spec, inits=inits, init=options["init"] or distill_out)


@main.command()
@_spec_options
def status(**options) -> None:
    """Print every stage: up to date, stale (and what changed), missing, or not set up (which variable to set)."""
    from distinit.pipeline.stages.graph import full_plan
    from distinit.pipeline.stages.stamps import stage_status

    spec = _spec(options)
    for entry in stage_status(full_plan(spec), spec.stamps_dir):
        reasons = f": {'; '.join(entry.reasons)}" if entry.reasons else ""
        key = f"  [key {entry.key}]" if entry.key else ""
        click.echo(f"{entry.stage:<10} {entry.state}{reasons}{key}")


@main.command()
@_spec_options
def stamps(**options) -> None:
    """Rewrite the stamp file of each stage whose key changed (make's dependencies; see pipeline/stages/stamps.py)."""
    from distinit.pipeline.stages.graph import stage_plan
    from distinit.pipeline.stages.stamps import update_stamps

    spec = _spec(options)
    adopted: list[str] = []
    changed = update_stamps(stage_plan(spec, until=options["until"]), spec.stamps_dir, adopted)
    if changed:
        click.echo(f"inputs changed for: {', '.join(changed)}")
    if adopted:
        click.echo(f"done outside make, adopted: {', '.join(adopted)} (their sealed outputs record these keys)")
