"""Stage three on the command line: `distinit eval` (finetune or linear-probe, then score)."""

from __future__ import annotations

import click

from distinit.pipeline.cli import main
from distinit.pipeline.cli.extract_commands import offline_option
from distinit.pipeline.errors import ConfigError


def _integers(text: str | None, option: str) -> list[int] | None:
    """`1,2,3` -> [1, 2, 3]; None stays None (the config file or the default decides)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,2,3") from None


def _eval_config(config_path, overrides, splits, seeds, options):
    """EvalConfig from the YAML file, `--set` pairs, comma lists and the remaining options (last wins)."""
    from distinit.evaluate.config import EvalConfig
    from distinit.pipeline.config import load_config, parse_overrides

    values = {**parse_overrides(overrides), **{key: value for key, value in options.items() if value is not None}}
    for name, text in (("splits", splits), ("seeds", seeds)):
        parsed = _integers(text, f"--{name}")
        if parsed is not None:
            values[name] = parsed
    return load_config(EvalConfig, config_path, values)


# A SLURM array task runs one run of the whole (pipeline/cluster/eval.sbatch); the report job then runs the whole.
def fan_out_options(command):
    """--tune-index / --run-index K and --count-tunings / --count-runs (evaluate.fan_out)."""
    for option in (
        click.option("--count-runs", is_flag=True, help="Print how many runs --run-index numbers, and stop."),
        click.option("--count-tunings", is_flag=True, help="Print how many tunings --tune-index numbers, and stop."),
        click.option("--run-index", type=int, default=None,
                     help="Only run number K (row, split, seed order), with every split's tuned choice; no report."),
        click.option("--tune-index", type=int, default=None,
                     help="Only tuning number K (row, split order) on validation, cached for the runs; no report."),
    ):
        command = option(command)
    return command


def _one_piece(config, inits, tune_index, run_index, count_tunings, count_runs, no_progress) -> bool:
    """The fan-out options (a SLURM array task's): print a count, or do one tuning or run; True when that was asked."""
    if not (count_tunings or count_runs) and tune_index is None and run_index is None:
        return False
    from distinit.evaluate.fan_out import run_list, run_one, tune_one, tuning_list

    if count_tunings or count_runs:
        click.echo(len(tuning_list(config, inits) if count_tunings else run_list(config, inits)))
    elif tune_index is not None:
        click.echo(f"tuning {tune_index}: {tune_one(config, tune_index, inits, show_progress=not no_progress)}")
    else:
        click.echo(f"run {run_index}: {run_one(config, run_index, inits, show_progress=not no_progress)}")
    return True


@main.command(name="eval")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config (configs/eval.yaml).")
@click.option("--data", default=None, help="hmdb51 | ucf101")
@click.option("--root", default=None, help="Dataset video root ({root}/{class}/*.avi).")
@click.option("--splits-dir", default=None, help="Split files (default: beside or inside --root, as the adapter finds them).")
@click.option("--splits", default=None, metavar="1,2,3", help="Official splits to run.")
@click.option("--init", default=None, help="A distill checkpoint (.pt or run folder) | scratch | inflated:<2d-model>.")
@click.option("--student", default=None, help="Architecture for scratch (default r2plus1d_18); checked against a checkpoint.")
@click.option("--width", default=None, help="full | tiny (for scratch; checked against a checkpoint).")
@click.option("--linear-probe/--finetune", "linear_probe", default=None, help="Freeze the trunk, train only the classifier.")
@click.option("--seeds", default=None, metavar="0,1,2", help="Repeat every split with each seed.")
@click.option("--flip/--no-flip", "flip", default=None, help="Random left-right flips of training clips (default on).")
@click.option("--test-clips", type=int, default=None, help="Uniformly spaced clips per test video (default 10).")
@click.option("--three-crop/--centre-crop", "three_crop", default=None, help="x 3 crops along the long side at test time.")
@click.option("--frames", type=int, default=None)
@click.option("--stride", type=int, default=None)
@click.option("--short-side", type=int, default=None)
@click.option("--crop", type=int, default=None)
@click.option("--optimizer", default=None, help="sgd | adamw")
@click.option("--lr", type=float, default=None, help="The classifier's learning rate.")
@click.option("--lr-trunk-scale", type=float, default=None, help="Trunk lr = lr x this (default 0.1 pretrained, 1 scratch).")
@click.option("--weight-decay", type=float, default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--dropout", type=float, default=None)
@click.option("--workers", type=int, default=None)
@click.option("--prepared", default=None, help="`distinit prepare`'s copies of this dataset (prepared/<data>), read instead.")
@click.option("--decoder", default=None, help="auto | torchcodec | pyav | ffmpeg (the same frames; speed only).")
@click.option("--decode-device", default=None, help="cpu | cuda (TorchCodec on NVDEC).")
@click.option("--threads", type=int, default=None, help="torch threads (default: one per core).")
@click.option("--device", default=None, help="auto | cpu | cuda")
@click.option("--amp", default=None, help="auto | bf16 | fp16 | off")
@click.option("--deterministic/--no-deterministic", default=None)
@click.option("--save-weights/--no-save-weights", default=None, help="Also write each run's finetuned model.")
@click.option("--allow-test-overlap", is_flag=True, default=None,
              help="Evaluate a checkpoint pretrained on test videos (or one that cannot be checked); reported as such.")
@click.option("--out", default=None, help="Output folder (default results/eval/<key>: finished runs are reused).")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
              help="Also write results.json and RESULTS.txt here (a fixed place; make's eval-hmdb uses results/<DATA>/eval-hmdb).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other config option.")
@click.option("--no-progress", is_flag=True)
@fan_out_options
@offline_option
def eval_command(config_path, overrides, splits, seeds, report_dir, no_progress, tune_index, run_index, count_tunings,
                 count_runs, **options) -> None:
    """Finetune a trunk (distilled, scratch or inflated) on HMDB-51 / UCF-101 splits and score it."""
    from distinit.evaluate.finetune import run_eval
    from distinit.evaluate.results import format_table, write_report_folder
    from distinit.evaluate.tuning import tune

    config = _eval_config(config_path, overrides, splits, seeds, options)
    if _one_piece(config, None, tune_index, run_index, count_tunings, count_runs, no_progress):
        return
    chosen = None
    if config.tune_lrs:  # learning rate and epoch chosen on each split's validation part first; test chooses nothing
        tuning = tune(config, show_progress=not no_progress)
        for entry in tuning.splits:
            click.echo(f"split {entry.split}: chosen on validation ({entry.validation_videos} videos): lr {entry.lr:g}, "
                       f"epoch {entry.stop_epoch} (validation video top-1 {100 * entry.val_video_top1:.1f})")
        chosen = tuning.chosen()
    result = run_eval(config, show_progress=not no_progress, chosen=chosen)
    click.echo(format_table(result))
    click.echo(f"{result.out_dir / 'results.json'}")
    if report_dir is not None:
        click.echo(f"{write_report_folder(result, report_dir)}")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML eval config shared by every init.")
@click.option("--inits", required=True, metavar="INIT,INIT,...",
              help="e.g. scratch,inflated:efficientnet_lite0,runs/distill (scratch copies the checkpoint's architecture and "
                   "comes first: the reference of the paired differences).")
@click.option("--data", default=None, help="hmdb51 | ucf101")
@click.option("--root", default=None, help="Dataset video root.")
@click.option("--splits", default=None, metavar="1,2,3")
@click.option("--seeds", default=None, metavar="0,1,2")
@click.option("--epochs", type=int, default=None)
@click.option("--allow-test-overlap", is_flag=True, default=None,
              help="Evaluate a checkpoint pretrained on test videos (or one that cannot be checked); reported as such.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Comparison folder (RESULTS.md, results.json, plots).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other eval config option.")
@click.option("--no-progress", is_flag=True)
@fan_out_options
@offline_option
def compare(config_path, inits, splits, seeds, out, overrides, no_progress, tune_index, run_index, count_tunings,
            count_runs, **options) -> None:
    """Scratch vs inflated vs DistInit on the same data, splits, seeds and schedule -> RESULTS.md + plots."""
    from distinit.evaluate.compare import compare as run_compare

    config = _eval_config(config_path, overrides, splits, seeds, options)
    inits = [init.strip() for init in inits.split(",") if init.strip()]
    if _one_piece(config, inits, tune_index, run_index, count_tunings, count_runs, no_progress):
        return
    comparison = run_compare(config, inits, out, show_progress=not no_progress)
    click.echo(comparison.table)
    click.echo(f"{comparison.out_dir / 'RESULTS.md'}")
