"""What each pipeline stage depends on, and the key that changes exactly when one of those things does.

A stage's inputs are its own config (the options that can change its output), what it reads from the
stage before it (that stage's key, or a dataset's manifest hash for data nobody generated) and its code
version. The key is a hash of those inputs, computed from configs alone, before anything runs, so the
Makefile can decide what is stale without starting a stage (pipeline/stages/stamps.py writes the stamp files).

    demo-data ──> extract ──> distill ──┬──> compare    (scratch / inflated / DistInit on HMDB-51)
    (DATA=demo)     ^ or a dataset's  ^ ├──> eval-hmdb  (one INIT on HMDB-51)
                      manifest hash   | └──> eval-ucf   (one INIT on UCF-101)
                  prepare ────────────┘  (PREPARE=1: distill reads re-encoded copies of the same videos)

An eval stage reads distill only when one of its inits is the pipeline's own distill output (DISTILL_OUT);
any other init enters its key by what it is (pipeline.init_sources): scratch, the sha256 of the 2D weights
an inflated init starts from, or of a checkpoint file. Its labeled data enters by manifest hash (or the
demo-data key when it lies inside the demo folder). Where a dataset lives is not part of any key: moving
it and passing the new folder re-runs nothing.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any, Callable

from distinit.pipeline.config import config_to_dict, load_config, parse_overrides
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_file, sha256_json
from distinit.pipeline.init_sources import init_identity

STAGES = ("demo-data", "extract", "prepare", "distill", "compare", "eval-hmdb", "eval-ucf")
# Extract's options that choose which videos; prepare takes the same ones, so it prepares what is extracted.
SELECTION_OPTIONS = ("split", "split_roles", "limit", "splits_dir", "annotations")
# The eval stages: which labeled dataset each scores on, and the make variable naming its folder.
EVAL_STAGES = {"compare": ("hmdb51", "HMDB_ROOT"), "eval-hmdb": ("hmdb51", "HMDB_ROOT"), "eval-ucf": ("ucf101", "UCF_ROOT")}

# Options that change how fast or where a stage runs, never what it produces (so changing one re-runs nothing).
# Where the dataset and its lists are (`root`, `splits_dir`, `annotations`) and where the targets go (`out`) are
# not what is extracted: the dataset enters the key by its manifest hash (ids, sizes, labels, split roles), and a
# missing output re-runs the stage anyway. No stage key holds a folder, for the same reasons.
EXTRACT_RUNTIME_OPTIONS = ("batch_size", "workers", "device", "max_failure_rate", "decode_timeout_seconds",
                           "root", "out", "splits_dir", "annotations")


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
    prepare: bool = False  # PREPARE=1: distill reads the prepare stage's copies of the videos
    prepare_config: str = "configs/prepare.yaml"
    prepare_set: tuple[str, ...] = ()
    prepared_root: str = "prepared"
    eval_config: str = "configs/eval.yaml"
    eval_set: tuple[str, ...] = ()
    eval_root: str | None = None  # HMDB_ROOT: compare and eval-hmdb
    ucf_root: str | None = None  # UCF_ROOT: eval-ucf
    inits: tuple[str, ...] = ()  # INITS: compare
    init: str | None = None  # INIT: eval-hmdb and eval-ucf
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
        return stage_key(self.inputs)

    @property
    def needs(self) -> tuple[str, ...]:
        """The stages whose outputs this one reads (make's prerequisites)."""
        return tuple(sorted(self.inputs.get("upstream", {})))


@dataclasses.dataclass(frozen=True)
class NotSetUp:
    """A stage the Makefile's variables do not configure (e.g. eval-ucf without UCF_ROOT), and why."""

    stage: str
    reason: str


def stage_plan(spec: PipelineSpec, until: str = "compare") -> list[StageInputs]:
    """Stage `until` and every stage it reads, upstream first, each with its inputs (a missing variable: ConfigError)."""
    if until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}; expected one of {', '.join(STAGES)}")
    planner = _Planner(spec)
    planner.inputs(until)
    return planner.plan


def full_plan(spec: PipelineSpec) -> list[StageInputs | NotSetUp]:
    """Every stage of the pipeline, in order: its inputs, or why the variables do not set it up (for `status`)."""
    planner = _Planner(spec)
    entries: list[StageInputs | NotSetUp] = []
    for stage in STAGES:
        if (stage == "demo-data" and spec.data != "demo") or (stage == "prepare" and not spec.prepare):
            continue
        try:
            entries.append(planner.inputs(stage))
        except ConfigError as error:
            entries.append(NotSetUp(stage, str(error)))
    return entries


class _Planner:
    """Each stage's inputs computed once, upstream first (`plan` keeps that order)."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.plan: list[StageInputs] = []
        self._done: dict[str, StageInputs] = {}
        self._builders: dict[str, Callable[[], StageInputs]] = {
            "demo-data": lambda: demo_data_inputs(spec),
            "extract": lambda: extract_inputs(spec, upstream=self.inputs("demo-data").key if spec.data == "demo" else None),
            "prepare": lambda: prepare_inputs(spec, upstream=self.inputs("demo-data").key if spec.data == "demo" else None),
            "distill": lambda: distill_inputs(spec, extract_key=self.inputs("extract").key,
                                              prepare_key=self.inputs("prepare").key if spec.prepare else None),
            **{stage: (lambda stage=stage: eval_inputs(spec, stage, self.inputs)) for stage in EVAL_STAGES},
        }

    def inputs(self, stage: str) -> StageInputs:
        if stage not in self._done:
            if stage == "demo-data" and self.spec.data != "demo":
                raise ConfigError("demo-data is a stage of DATA=demo only")
            self._done[stage] = self._builders[stage]()
            self.plan.append(self._done[stage])
        return self._done[stage]


def demo_data_inputs(spec: PipelineSpec) -> StageInputs:
    from distinit.pipeline.demo_data.build import STAMP_NAME
    from distinit.pipeline.demo_data.config import DemoDataConfig

    config = load_config(DemoDataConfig, spec.demo_config, parse_overrides(spec.demo_set))
    return StageInputs("demo-data", demo_data_stage_inputs(config), Path(spec.demo_dir) / STAMP_NAME)


def demo_data_stage_inputs(config: Any) -> dict[str, Any]:
    """The demo-data stage's inputs, from its DemoDataConfig."""
    from distinit.pipeline.demo_data.build import _OPTIONS_WITHOUT_EFFECT, GENERATOR_VERSION

    options = {name: value for name, value in config_to_dict(config).items() if name not in _OPTIONS_WITHOUT_EFFECT}
    return {"config": options, "code": f"demo-data-{GENERATOR_VERSION}"}


def demo_data_key_of(folder: str | Path) -> str | None:
    """The demo-data stage key of a built demo folder, from the config.yaml it keeps; None when it has none."""
    from distinit.pipeline.demo_data.config import DemoDataConfig

    try:
        config = load_config(DemoDataConfig, Path(folder) / "config.yaml", {})
    except (ConfigError, OSError):
        return None
    return stage_key(demo_data_stage_inputs(config))


def extract_inputs(spec: PipelineSpec, upstream: str | None) -> StageInputs:
    from distinit.extract.config import ExtractConfig

    overrides = {**parse_overrides(spec.extract_set), "data": spec.data, "out": spec.targets_root}
    overrides["root"] = spec.demo_dir if spec.data == "demo" else spec.root
    if not overrides["root"]:
        raise ConfigError(f"data {spec.data} needs its dataset folder: set ROOT=<folder> (make) or --root")
    config = load_config(ExtractConfig, spec.extract_config, overrides)
    return StageInputs("extract", extract_stage_inputs(config, upstream), Path(spec.targets_root) / spec.data / "latest")


def extract_stage_inputs(config: Any, demo_data_key: str | None) -> dict[str, Any]:
    """The extract stage's inputs, from its ExtractConfig (as make plans it, and as `distinit extract` records it in
    the folder it seals, whoever launched it): `demo_data_key` for the demo's videos, else the listing's hash."""
    from distinit.extract.config import CODE_VERSION

    options = {name: value for name, value in config_to_dict(config).items() if name not in EXTRACT_RUNTIME_OPTIONS}
    if config.split is None:
        options.pop("split_roles")  # without a split filter the roles select nothing
    options["teacher_options"] = _with_file_hashes(config.teacher_options)
    return _selected_videos({"config": options, "code": CODE_VERSION}, config, demo_data_key)


def stage_key(inputs: dict[str, Any]) -> str:
    """A stage's key: the hash of its inputs (StageInputs.key)."""
    return sha256_json(inputs)[:16]


def prepare_inputs(spec: PipelineSpec, upstream: str | None) -> StageInputs:
    """The prepare stage: extract's selection of the videos (its split/limit options) re-encoded by configs/prepare.yaml."""
    from distinit.pipeline.prepared.config import CODE_VERSION, PrepareConfig

    # As make runs it: configs/prepare.yaml, then EXTRACT_SET's selection options, then PREPARE_SET. A selection
    # written into configs/extract.yaml alone is not forwarded: prepare then copies more videos than are
    # extracted, which costs time, never a missing copy.
    selection = {name: value for name, value in parse_overrides(spec.extract_set).items() if name in SELECTION_OPTIONS}
    root = spec.demo_dir if spec.data == "demo" else spec.root
    if not root:
        raise ConfigError(f"data {spec.data} needs its dataset folder: set ROOT=<folder> (make) or --root")
    overrides = {**selection, **parse_overrides(spec.prepare_set), "data": spec.data, "root": root,
                 "out": spec.prepared_root}
    config = load_config(PrepareConfig, spec.prepare_config, overrides)
    # The selection too: the demo's listing enters through the demo-data key, which does not hold it.
    options = {**config.key_fields(), "split": config.split, "split_roles": list(config.split_roles),
               "limit": config.limit}
    inputs = _selected_videos({"config": options, "code": CODE_VERSION}, config, upstream)
    return StageInputs("prepare", inputs, Path(spec.prepared_root) / spec.data / "latest")


def _selected_videos(inputs: dict[str, Any], config: Any, demo_data_key: str | None) -> dict[str, Any]:
    """`inputs` plus what a stage reading a dataset reads: the demo-data stage's key, or the hash of the listing
    the config selects (extract's and prepare's configs share the selection options)."""
    if demo_data_key is not None:
        return {**inputs, "upstream": {"demo-data": demo_data_key}}
    from distinit.pipeline.datasets.records import manifest_hash
    from distinit.pipeline.datasets.selection import selected_listing

    return {**inputs, "data": manifest_hash(selected_listing(config))}


def distill_inputs(spec: PipelineSpec, extract_key: str, prepare_key: str | None = None) -> StageInputs:
    from distinit.distill.config import DistillConfig

    overrides = {**parse_overrides(spec.distill_set), "targets": str(Path(spec.targets_root) / spec.data)}
    config = load_config(DistillConfig, spec.distill_config, overrides)
    inputs = distill_stage_inputs(config, spec.distill_processes, extract_key, prepare_key)
    return StageInputs("distill", inputs, Path(config.out) / "latest")


def distill_stage_inputs(config: Any, processes: int | str, extract_key: str, prepare_key: str | None) -> dict[str, Any]:
    """The distill stage's inputs, from its DistillConfig (as make plans it, and as `distinit distill` records it in
    the run it finishes). The global batch, not the number of processes: with `global_batch` set, NPROC and the
    nodes change nothing (a cluster's 4x8 run is the run make looks for); without it, batch_size x the processes."""
    from distinit.distill.config import CODE_VERSION

    if isinstance(processes, int):
        config.accum_steps(processes)  # a global batch these processes cannot make up: refused before anything runs
    upstream = {"extract": extract_key}
    if prepare_key is not None:
        upstream["prepare"] = prepare_key  # re-encoded copies: the same frames, other pixels
    return {"config": config.key_fields(processes), "upstream": upstream, "code": CODE_VERSION}


def eval_inputs(spec: PipelineSpec, stage: str, upstream_inputs: Callable[[str], StageInputs]) -> StageInputs:
    """compare (INITS on HMDB-51), eval-hmdb or eval-ucf (INIT on HMDB-51 / UCF-101)."""
    from distinit.evaluate.config import CODE_VERSION, EvalConfig

    data, root_variable = EVAL_STAGES[stage]
    inits = spec.inits if stage == "compare" else ((spec.init,) if spec.init else ())
    if not inits:
        wanted = "INITS=scratch,inflated:...,runs/..." if stage == "compare" else "INIT=<checkpoint>|scratch|inflated:..."
        raise ConfigError(f"the {stage} stage needs {'at least one init' if stage == 'compare' else 'an init'}: set {wanted}")
    overrides = {**parse_overrides(spec.eval_set), "data": data, "seeds": list(spec.seeds)}
    root = spec.ucf_root if data == "ucf101" else spec.eval_root
    if root:
        overrides["root"] = root
    elif data == "ucf101":
        overrides["root"] = ""  # the eval config's root is the HMDB-51 folder
    config = load_config(EvalConfig, spec.eval_config, overrides)
    if not config.root:
        raise ConfigError(f"the {stage} stage needs its {data} video folder: set {root_variable}=<folder>")
    upstream: dict[str, str] = {}
    distill_out = Path(distill_output_folder(spec))
    identities = []
    for init in inits:
        if _is_same_folder(init, distill_out):
            upstream["distill"] = upstream_inputs("distill").key
            identities.append({"kind": "distill output"})
        else:
            identities.append(init_identity(init))
    data_hash = None
    if spec.data == "demo" and Path(config.root).resolve().is_relative_to(Path(spec.demo_dir).resolve()):
        upstream["demo-data"] = upstream_inputs("demo-data").key
    else:
        data_hash = manifest_hash_of(config.data, config.root, splits_dir=config.splits_dir)
    selection = {"splits": list(config.splits), "seeds": list(config.seeds)}
    selection.update({"inits": identities} if stage == "compare" else {"init": identities[0]})
    inputs = {"config": {**config.key_fields(), **selection}, "upstream": upstream, "code": CODE_VERSION}
    if data_hash is not None:
        inputs["data"] = data_hash
    return StageInputs(stage, inputs, eval_output(spec, stage))


def eval_output(spec: PipelineSpec, stage: str) -> Path:
    """compare: <results>/RESULTS.md; eval-hmdb / eval-ucf: <results>/<stage>/results.json (`distinit eval --report`)."""
    results_dir = Path(spec.results_dir or f"results/{spec.data}")
    return results_dir / "RESULTS.md" if stage == "compare" else results_dir / stage / "results.json"


def distill_output_folder(spec: PipelineSpec) -> str:
    """Where the pipeline's distill writes its runs (DISTILL_OUT), from its config alone."""
    from distinit.distill.config import DistillConfig

    return load_config(DistillConfig, spec.distill_config, parse_overrides(spec.distill_set)).out


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
    from distinit.pipeline.datasets import load_dataset
    from distinit.pipeline.datasets.records import manifest_hash
    from distinit.pipeline.datasets.selection import select_records

    listing = select_records(load_dataset(data, root, **options), splits=splits, roles=roles, limit=limit)
    return manifest_hash(listing)


def _with_file_hashes(teacher_options: dict[str, Any]) -> dict[str, Any]:
    """Teacher options where a value names an existing file (weights) stand for that file's sha256."""
    hashed: dict[str, Any] = {}
    for teacher, options in sorted(teacher_options.items()):
        hashed[teacher] = {}
        for name, value in sorted(dict(options).items()):
            if isinstance(value, str) and Path(value).is_file():
                value = {"sha256": sha256_file(value)}  # what the file holds, not where it is
            hashed[teacher][name] = value
    return hashed


def _is_same_folder(init: str, folder: Path) -> bool:
    """Whether INIT is the pipeline's distill output (its runs root, whose `latest` run eval scores). A run folder
    or checkpoint inside it is a fixed file, keyed by its sha256 like any other checkpoint."""
    if init == "scratch" or init.startswith("inflated:"):
        return False
    return Path(init).resolve() == folder.resolve()
