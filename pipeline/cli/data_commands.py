"""`distinit datasets` and `distinit manifest`: dataset adapters and their record manifests."""

from __future__ import annotations

import click

from distinit.pipeline.cli import main


@main.command()
def datasets() -> None:
    """List the dataset adapters and the layouts they read."""
    from distinit.pipeline.datasets import ADAPTERS

    for name, adapter in sorted(ADAPTERS.items()):
        click.echo(f"{name:10s} {adapter.description}")


@main.command()
@click.option("--data", "dataset_name", required=True, help="Adapter name (see `distinit datasets`).")
@click.option("--root", required=True, type=click.Path(), help="Dataset root folder.")
@click.option("--splits", "splits_dir", type=click.Path(), default=None, help="Split-file folder (HMDB-51, UCF-101).")
@click.option("--annotations", type=click.Path(), default=None, help="Annotation CSV(s) folder or file (Kinetics).")
@click.option("--out", required=True, type=click.Path(), help="JSONL file to write.")
def manifest(dataset_name: str, root: str, splits_dir: str | None, annotations: str | None, out: str) -> None:
    """Write a dataset's video records as JSONL and print its content hash."""
    from distinit.pipeline.datasets import load_dataset, write_manifest

    listing = load_dataset(dataset_name, root, splits_dir=splits_dir, annotations=annotations)
    digest = write_manifest(listing, out)
    click.echo(f"{len(listing.records)} videos ({len(listing.missing)} missing) -> {out}")
    click.echo(f"sha256 {digest}")
