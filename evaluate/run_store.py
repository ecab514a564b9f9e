"""Where stage three keeps finished runs, and the key that says when one can be reused.

A results folder is named by `results_key` (config fields for the purpose, dataset manifest, init identity and
normalisation, code version, the lr and epoch tuning chose per split); each (split, seed) run is stored as
`runs/split<S>-seed<N>.json` with the key it was made under (and its weights with `save_weights`), and reused only
when that key matches.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

from distinit.distill.checkpoint import save_checkpoint
from distinit.evaluate.classifier import VideoClassifier
from distinit.evaluate.config import CODE_VERSION, EvalConfig
from distinit.evaluate.initialization import Initialization
from distinit.evaluate.results import RunResult
from distinit.pipeline.atomic import atomic_write_text, make_output_folder
from distinit.pipeline.hashing import sha256_json
from distinit.pipeline.prepared.manifest import sealed_folder

logger = logging.getLogger(__name__)


def results_key(config: EvalConfig, manifest_sha256: str, initialization: Initialization, purpose: str = "run",
                chosen: Mapping[int, tuple[float, int]] | None = None) -> str:
    """What names a results folder and lets finished runs be reused: config (EvalConfig.key_fields(purpose)),
    dataset, init, normalisation, code, and the lr and epoch chosen per split where tuning chose them."""
    fields = {"config": config.key_fields(purpose), "dataset": manifest_sha256, "init": initialization.identity,
              "input_normalisation": initialization.normalisation.to_dict(), "code_version": CODE_VERSION}
    if chosen:
        fields["chosen"] = {str(split): list(choice) for split, choice in sorted(chosen.items())}
    if config.prepared:
        fields["prepared"] = sealed_folder(config.prepared).name  # re-encoded copies: other pixels, same frames
    return sha256_json(fields)[:16]


def _run_paths(out_dir: Path, split: int, seed: int) -> tuple[Path, Path]:
    stem = out_dir / "runs" / f"split{split}-seed{seed}"
    return stem.with_suffix(".json"), stem.with_suffix(".pt")


def _cached_run(out_dir: Path, key: str, split: int, seed: int, config: EvalConfig) -> RunResult | None:
    record_path, weights_path = _run_paths(out_dir, split, seed)
    if not record_path.is_file() or (config.save_weights and not weights_path.is_file()):
        return None
    try:
        stored = json.loads(record_path.read_text())
        if stored.get("key") != key:
            return None
        run = RunResult.from_dict(stored["run"])
    except (ValueError, KeyError, TypeError):
        return None
    logger.info("split %d seed %d: reusing %s", split, seed, record_path)
    return run


def _store_run(out_dir: Path, key: str, run: RunResult, model: VideoClassifier, class_names, config: EvalConfig):
    record_path, weights_path = _run_paths(out_dir, run.split, run.seed)
    make_output_folder(record_path.parent)
    if config.save_weights:
        save_checkpoint(weights_path, {"model": model.state_dict(), "architecture": model.backbone.architecture(),
                                       "class_names": list(class_names), "dropout": config.dropout, "key": key})
    atomic_write_text(record_path, json.dumps({"key": key, "run": run.to_dict()}, sort_keys=True) + "\n")
