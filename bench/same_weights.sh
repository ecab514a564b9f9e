#!/usr/bin/env bash
# Does a change keep distillation's weights? A 2-process CPU distill (torchrun, gloo, 2 epochs of the demo config,
# 4 clips per process per step) from each tree's own stage-one extraction of the demo pool, before the change (a
# worktree of the given commit) and after (this tree); prints how many weight tensors differ. Issue 21's check:
#     bash bench/same_weights.sh c7ae68b           # ~6 min on 2 cores (the demo data made first if missing)
# A tree from before issue 22 imports its stages as top-level `pipeline`, ...; a later one as `distinit.pipeline`, ...:
# each runs from a folder whose distinit/ links to the tree's stage folders, first on PYTHONPATH (ahead of the venv's
# editable install of this checkout).
set -euo pipefail
BEFORE=${1:?usage: bench/same_weights.sh <commit before the change> [work folder]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${2:-/tmp/distinit-same-weights}
PY=$ROOT/.venv/bin/python
mkdir -p "$OUT"
[ -d "$OUT/before-tree" ] || git -C "$ROOT" worktree add --detach "$OUT/before-tree" "$BEFORE"
[ -d "$ROOT/data/demo/pool" ] || make -C "$ROOT" demo-data
for side in before after; do
  tree=$([ $side = before ] && echo "$OUT/before-tree" || echo "$ROOT")
  cd "$tree"
  shim=$OUT/$side-shim/distinit
  mkdir -p "$shim" && for stage in pipeline extract distill evaluate; do ln -sfn "$tree/$stage" "$shim/$stage"; done
  module=$(grep -q '"distinit.pipeline"' "$tree/pyproject.toml" && echo distinit.pipeline || echo pipeline)
  export PYTHONPATH=$OUT/$side-shim:$tree
  [ -f "$OUT/$side-targets/demo/latest" ] || $PY -m $module extract --config configs/extract.yaml \
    --data demo --root "$ROOT/data/demo" --out "$OUT/$side-targets"
  rm -rf "$OUT/$side-runs"
  OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nproc_per_node 2 -m $module distill \
    --config configs/demo-distill.yaml --targets "$OUT/$side-targets/demo" --out "$OUT/$side-runs" --epochs 2 \
    --batch-size 4 --workers 1 --device cpu --no-tensorboard --no-progress
done
OUT=$OUT $PY - <<'PY'
import glob, os, torch
out = os.environ["OUT"]
states = [torch.load(glob.glob(f"{out}/{side}-runs/*/checkpoint-last.pt")[0], map_location="cpu", weights_only=False)["model"]
          for side in ("before", "after")]
assert states[0].keys() == states[1].keys()
different = [name for name in states[0] if not torch.equal(states[0][name], states[1][name])]
print(f"{len(states[0])} weight tensors, {len(different)} differ{': ' + ', '.join(different[:5]) if different else ''}")
PY
