"""What the stages share: config, video I/O, dataset adapters, the shard format, stage bookkeeping, the CLI."""

__version__ = "0.1.0"
