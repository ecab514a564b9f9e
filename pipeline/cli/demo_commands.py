"""`distinit demo-data`: build the embedded demo data set from what pip installed."""

from __future__ import annotations

import click

from distinit.pipeline.cli import main


@main.command("demo-data")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to create (e.g. data/demo).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config option.")
def demo_data(out: str, config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Generate the unlabeled clip pool and the HMDB-51-layout action set (deterministic, offline)."""
    from distinit.pipeline.config import load_config, parse_overrides
    from distinit.pipeline.demo_data import DemoDataConfig, build_demo_data

    config = load_config(DemoDataConfig, config_path, parse_overrides(overrides))
    summary = build_demo_data(out, config)
    for line in summary.lines():
        click.echo(line)
