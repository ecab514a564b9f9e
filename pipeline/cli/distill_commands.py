"""Stage two on the command line: `distinit distill`, `distinit export`, `distinit students`."""

from __future__ import annotations

import click
import yaml

from distinit.pipeline.cli import main


def _loss_weights(text: str | None) -> dict | None:
    if not text:
        return None
    from distinit.distill.losses import parse_loss_weights

    return parse_loss_weights(text)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config (configs/distill.yaml).")
@click.option("--targets", default=None, help="targets/<data>/<key>, or targets/<data> for the latest extraction.")
@click.option("--videos", "videos_root", default=None, help="Video root, if the videos moved since extraction.")
@click.option("--prepared", default=None,
              help="Read `distinit prepare`'s copies (prepared/<data> or a key folder) instead of the originals.")
@click.option("--decoder", default=None, help="auto | torchcodec | pyav | ffmpeg (the same frames; speed only).")
@click.option("--decode-device", default=None, help="cpu | cuda (TorchCodec on NVDEC).")
@click.option("--student", default=None, help="r2plus1d_18 | r3d_18 | mc3_18 | s3d | resnet18_3d | efficientnet_lite0_3d (see `distinit students`).")
@click.option("--width", default=None, help="full | tiny")
@click.option("--modality", default=None, help="rgb | flow")
@click.option("--frames", type=int, default=None)
@click.option("--stride", type=int, default=None)
@click.option("--short-side", type=int, default=None)
@click.option("--crop", type=int, default=None)
@click.option("--target-agg", default=None, help="mean | random")
@click.option("--temperature", type=float, default=None)
@click.option("--loss-weights", default=None, metavar="INSTANCE=W,...", help="Per teacher instance (or a unique prefix), e.g. r18=0.5,coco-keypoints=1")
@click.option("--optimizer", default=None, help="sgd | adamw")
@click.option("--lr", type=float, default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--workers", default=None, help="Loader processes per rank: auto (its share of the cores, less one) | N.")
@click.option("--device", default=None, help="auto | cpu | cuda")
@click.option("--amp", default=None, help="auto | bf16 | fp16 | off")
@click.option("--seed", type=int, default=None)
@click.option("--deterministic/--no-deterministic", default=None)
@click.option("--cache-clips", default=None, type=click.Path(file_okay=False), help="Folder for pre-decoded clips.")
@click.option("--out", default=None, help="Runs root (default runs/distill).")
@click.option("--tensorboard/--no-tensorboard", default=None,
              help="TensorBoard event files beside log.jsonl (default on, when tensorboard is installed).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other config option.")
@click.option("--no-progress", is_flag=True)
def distill(config_path, overrides, loss_weights, no_progress, **options) -> None:
    """Train a 3D student on cached teacher targets; resumes automatically from its run folder."""
    from distinit.distill.config import DistillConfig
    from distinit.distill.train import train
    from distinit.pipeline.config import load_config, parse_overrides

    values = {**parse_overrides(overrides), **{key: value for key, value in options.items() if value is not None}}
    if isinstance(values.get("workers"), str) and values["workers"].strip().isdigit():
        values["workers"] = int(values["workers"])
    weights = _loss_weights(loss_weights)
    if weights:
        values["loss_weights"] = weights
    config = load_config(DistillConfig, config_path, values)
    result = train(config, show_progress=not no_progress)
    if not result.is_main:  # under torchrun, rank 0 reports the figures of all ranks
        return
    if result.history:
        last = result.history[-1]
        shown = ("train_loss", "val_loss", "val_agreement_top1", "val_agreement_top5", "val_clips")
        summary = ", ".join(f"{key} {last[key]:.4g}" for key in shown if key in last)
        click.echo(f"epoch {result.epoch}, step {result.step}: {summary}")
    state = "stopped early (resume by running the same command)" if result.stopped_early else "done"
    click.echo(f"{result.run_dir}: {state}")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(),
              help="safetensors: the folder to write (model.safetensors, config.json, heads.safetensors); pt: the .pt file.")
@click.option("--format", "export_format", type=click.Choice(["safetensors", "pt"]), default=None,
              help="safetensors (the default; pt when --out ends in .pt or .pth): see docs/export.md.")
def export(checkpoint: str, out: str, export_format: str | None) -> None:
    """Write a checkpoint's trunk for its reference model (torchvision's video model), with its config and heads."""
    from distinit.distill.export import export_trunk

    result = export_trunk(checkpoint, out, export_format)
    click.echo(f"trunk -> {result['trunk']} (loads into {result['loads_into']}; "
               f"missing only {', '.join(result['missing_keys'])})")
    if result["config"] is not None:
        click.echo(f"config -> {result['config']}")
    if result["heads"] is not None:
        click.echo(f"heads -> {result['heads']}")


@main.command()
def students() -> None:
    """List the registered students."""
    from distinit.distill.students import list_students

    for name in list_students():
        click.echo(name)
