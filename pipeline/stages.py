"""What each pipeline stage depends on, and the key that changes exactly when one of those things does.

A stage's inputs are its own config (the options that can change its output), what it reads from the
stage before it (that stage's key, or a dataset's manifest hash for data nobody generated) and its code
version. The key is a hash of those inputs, computed from configs alone, before anything runs, so the
Makefile can decide what is stale without starting a stage (pipeline/stamps.py writes the stamp files).

    demo-data ──> extract ──> distill ──> eval (compare: scratch / inflated / DistInit)
    (DATA=demo)     ^ or a dataset's manifest          ^ labeled data: demo-data's key or HMDB-51's manifest
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

from pipeline.config import config_to_dict, load_config, parse_overrides
from pipeline.errors import ConfigError
from pipeline.hashing import sha256_file, sha256_json

STAGES = ("demo-data", "extract", "distill", "eval")

# Options that change how fast or where a stage runs, never what it produces (so changing one re-runs nothing).
EXTRACT_RUNTIME_OPTIONS = ("batch_size", "workers", "device", "max_failure_rate", "decode_timeout_seconds")


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """The Makefile's variables: which data, which config files, which `key=value` overrides."""

    stamps_dir: str
    data: str = "demo"
    root: str | None = None
    demo_dir: str = "data/demo"
    demo_config: str = "configs/demo-data.yaml"
    demo_set: tuple[str, ...] = ()
    extract_config: str = "configs/extract.yaml"
    extract_set: tuple[str, ...] = ()
    targets_root: str = "targets"
    distill_config: str = "configs/distill.yaml"
    distill_set: tuple[str, ...] = ()
    distill_processes: int | str = 1  # how many processes distill runs as (`distill_process_count`)
    eval_config: str = "configs/eval.yaml"
    eval_set: tuple[str, ...] = ()
    eval_root: str | None = None
    inits: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    results_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class StageInputs:
    """One stage's inputs by name (`config`: {option: value}, `upstream`: {stage: key}, `data`, `code`)."""

    stage: str
    inputs: dict[str, Any]
    output: Path  # exists once the stage has run (a folder, a `latest` pointer or a report)

    @property
    def key(self) -> str:
        return sha256_json(self.inputs)[:16]


def stage_plan(spec: PipelineSpec, until: str = "eval") -> list[StageInputs]:
    """The stages `until` needs, in order, each with its inputs; upstream keys are filled in along the way."""
    if until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}; expected one of {', '.join(STAGES)}")
    wanted = STAGES[: STAGES.index(until) + 1]
    plan: list[StageInputs] = []
    if spec.data == "demo":
        plan.append(demo_data_inputs(spec))
    if "extract" in wanted:
        plan.append(extract_inputs(spec, upstream=plan[-1].key if plan else None))
    if "distill" in wanted:
        plan.append(distill_inputs(spec, extract_key=plan[-1].key))
    if "eval" in wanted:
        plan.append(eval_inputs(spec, distill=plan[-1], demo=plan[0] if spec.data == "demo" else None))
    return plan


def demo_data_inputs(spec: PipelineSpec) -> StageInputs:
    from pipeline.demo_data.build import _OPTIONS_WITHOUT_EFFECT, GENERATOR_VERSION, STAMP_NAME
    from pipeline.demo_data.config import DemoDataConfig

    config = load_config(DemoDataConfig, spec.demo_config, parse_overrides(spec.demo_set))
    options = {name: value for name, value in config_to_dict(config).items() if name not in _OPTIONS_WITHOUT_EFFECT}
    inputs = {"config": options, "code": f"demo-data-{GENERATOR_VERSION}", "out": spec.demo_dir}
    return StageInputs("demo-data", inputs, Path(spec.demo_dir) / STAMP_NAME)


def extract_inputs(spec: PipelineSpec, upstream: str | None) -> StageInputs:
    from extract.config import CODE_VERSION, ExtractConfig

    overrides = {**parse_overrides(spec.extract_set), "data": spec.data, "out": spec.targets_root}
    overrides["root"] = spec.demo_dir if spec.data == "demo" else spec.root
    if not overrides["root"]:
        raise ConfigError(f"data {spec.data} needs its dataset folder: set ROOT=<folder> (make) or --root")
    config = load_config(ExtractConfig, spec.extract_config, overrides)
    options = {name: value for name, value in config_to_dict(config).items() if name not in EXTRACT_RUNTIME_OPTIONS}
    if config.split is None:
        options.pop("split_roles")  # without a split filter the roles select nothing
    options["teacher_options"] = _with_file_hashes(config.teacher_options)
    inputs: dict[str, Any] = {"config": options, "code": CODE_VERSION}
    if upstream is not None:
        inputs["upstream"] = {"demo-data": upstream}
    else:
        inputs["data"] = manifest_hash_of(config.data, config.root, config.limit, splits=config.split,
                                          roles=config.split_roles, splits_dir=config.splits_dir,
                                          annotations=config.annotations)
    return StageInputs("extract", inputs, Path(spec.targets_root) / spec.data / "latest")


def distill_inputs(spec: PipelineSpec, extract_key: str) -> StageInputs:
    from distill.config import CODE_VERSION, DistillConfig

    overrides = {**parse_overrides(spec.distill_set), "targets": str(Path(spec.targets_root) / spec.data)}
    config = load_config(DistillConfig, spec.distill_config, overrides)
    options = {name: value for name, value in config.key_fields().items() if name != "targets"}
    # batch_size is per process: the number of processes changes the global batch and the schedule. Left out
    # at 1, so the keys of single-process runs stay what they were before it was counted.
    if spec.distill_processes != 1:
        options["processes"] = spec.distill_processes
    inputs = {"config": options, "upstream": {"extract": extract_key}, "code": CODE_VERSION, "out": config.out}
    return StageInputs("distill", inputs, Path(config.out) / "latest")


def eval_inputs(spec: PipelineSpec, distill: StageInputs, demo: StageInputs | None) -> StageInputs:
    from evaluate.config import CODE_VERSION, EvalConfig

    if not spec.inits:
        raise ConfigError("the eval stage needs at least one init (INITS=scratch,inflated:...,runs/...)")
    overrides = {**parse_overrides(spec.eval_set), "data": "hmdb51", "seeds": list(spec.seeds)}
    if spec.eval_root:
        overrides["root"] = spec.eval_root
    config = load_config(EvalConfig, spec.eval_config, overrides)
    distill_out = Path(distill.inputs["out"])
    upstream = {}
    if any(_is_under(init, distill_out) for init in spec.inits):
        upstream["distill"] = distill.key
    if demo is not None and Path(config.root).resolve().is_relative_to(Path(spec.demo_dir).resolve()):
        upstream["demo-data"] = demo.key
        data = None
    else:
        data = manifest_hash_of(config.data, config.root, splits_dir=config.splits_dir)
    selection = {"splits": list(config.splits), "seeds": list(config.seeds), "inits": list(spec.inits)}
    inputs = {"config": {**config.key_fields(), **selection}, "upstream": upstream, "code": CODE_VERSION}
    if data is not None:
        inputs["data"] = data
    results_dir = Path(spec.results_dir or f"results/{spec.data}")
    return StageInputs("eval", inputs, results_dir / "RESULTS.md")


def distill_process_count(processes_per_node: str | int | None, torchrun_args: str = "") -> int | str:
    """How many processes make's distill runs as: NPROC (processes per node; unset: 1, no torchrun) times the
    `--nnodes N` of TORCHRUN_ARGS (1 when it has none, or an elastic range such as 1:4, unknown ahead). NPROC as
    torchrun's auto/cpu/gpu depends on the machine: that word stands in the key (`gpu x 2 nodes`)."""
    try:
        words = shlex.split(torchrun_args or "")
    except ValueError:  # unbalanced quotes: torchrun gets them as make passes them, word by word
        words = (torchrun_args or "").split()
    nodes = _option_value(words, ("--nnodes",))
    nodes = int(nodes) if nodes is not None and nodes.isdigit() and int(nodes) > 0 else 1
    # torchrun takes the last --nproc_per_node it is given: one inside TORCHRUN_ARGS overrides NPROC.
    per_node = _option_value(words, ("--nproc_per_node", "--nproc-per-node")) or processes_per_node
    per_node = str(per_node or "1").strip()
    if per_node.isdigit():
        return int(per_node) * nodes
    return f"{per_node} x {nodes} nodes"


def _option_value(words: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last `--name V` or `--name=V` among `words`, for any of `names`; None if absent."""
    value = None
    for position, word in enumerate(words):
        for name in names:
            if word.startswith(name + "="):
                value = word.split("=", 1)[1]
            elif word == name and position + 1 < len(words):
                value = words[position + 1]
    return value


def manifest_hash_of(data: str, root: str, limit: int | None = None, splits: int | tuple[int, ...] | None = None,
                     roles: tuple[str, ...] = ("train",), **options) -> str:
    """The hash of a dataset listing as a stage selects it (relative paths and sizes: touching a video
    changes nothing)."""
    from pipeline.datasets import load_dataset
    from pipeline.datasets.records import manifest_hash
    from pipeline.datasets.selection import select_records

    listing = select_records(load_dataset(data, root, **options), splits=splits, roles=roles, limit=limit)
    return manifest_hash(listing)


def _with_file_hashes(teacher_options: dict[str, Any]) -> dict[str, Any]:
    """Teacher options where a value names an existing file (weights) also carry that file's sha256."""
    hashed: dict[str, Any] = {}
    for teacher, options in sorted(teacher_options.items()):
        hashed[teacher] = {}
        for name, value in sorted(dict(options).items()):
            if isinstance(value, str) and Path(value).is_file():
                value = {"path": value, "sha256": sha256_file(value)}
            hashed[teacher][name] = value
    return hashed


def _is_under(init: str, folder: Path) -> bool:
    if init == "scratch" or init.startswith("inflated:"):
        return False
    return Path(init).resolve().is_relative_to(folder.resolve())  # the folder itself counts
