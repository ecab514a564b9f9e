"""The distillation loss: one named term per student head, and their weighted sum `loss`.

- "logits" (classifiers): KL(teacher || student) between softmax(logits / T), times T^2 so gradients keep
  their scale as T changes (Hinton et al.), mean over the batch. Targets are the teacher's logits.
- "multilabel_scores" (objects): binary cross-entropy of the student's logits against the teacher's soft
  scores in [0, 1], minus the targets' own entropy, averaged over classes and batch. Subtracting that
  constant turns it into the Bernoulli KL: the same gradients as plain BCE, but 0 for a perfect student,
  like the other two terms (so "the loss fell by 80%" means the same thing for every head).
- "heatmaps" (keypoints): KL(teacher map || softmax over the student's G x G logits) per keypoint, mean
  over the keypoints whose target map is not all zero (one outside the crop carries no mass), mean over the
  samples whose person flag (`targets[mask_key]`) exceeds 0.5. Target maps
  are renormalised to sum to 1 (a window averaging frames with and without a person sums to less). A batch
  with nobody in it gives 0, still attached to the graph.
  Under DDP the mean is over the masked samples of the whole step, all ranks together: with `sum_over_ranks`
  giving the global count G and W ranks, each rank returns its own sum / G * W. DDP averages gradients over
  the W ranks, so the step's gradient is that of (sum over all ranks) / G, as one process with the
  concatenated batch would get; averaging the ranks' reported values gives the same figure.
- "embedding" (CLIP, DINOv2, pooled features): the cosine distance 1 - cos(student, target), mean over the
  batch. Only the direction counts: teachers' embeddings differ in scale (CLIP's are unnormalised), and a
  window's target is already a mean of unit vectors (distill.windows). 0 for a perfect student, at most 2.
Terms are reported unweighted as `kd/<teacher>/<output>`; `loss` sums them with per-teacher weights.
For reporting, a keypoint term also comes with this process's summed per-sample KL and its sample count
(`part_keys`), and `report_parts` turns a step's terms into sums whose ratio over an epoch is the figure one
process would get over all its clips at once, whatever the batch size and number of processes.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as functional

from distinit.distill.heads import HeadSpec
from distinit.pipeline.errors import ConfigError

PERSON_PRESENT_THRESHOLD = 0.5

CountReducer = Callable[[torch.Tensor], torch.Tensor]


class DistillationLoss:
    """`sum_over_ranks` (sums a tensor over the DDP ranks) and `world_size` make the keypoint term's mean
    global (see the module docstring); without them it is this process's batch only."""

    def __init__(self, heads: Sequence[HeadSpec], temperature: float = 1.0, weights: Mapping[str, float] | None = None,
                 *, sum_over_ranks: CountReducer | None = None, world_size: int = 1):
        if not temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0; got {temperature}")
        self.heads = list(heads)
        self.temperature = float(temperature)
        self.sum_over_ranks = sum_over_ranks
        self.world_size = int(world_size)
        teacher_names = sorted({spec.teacher for spec in self.heads})
        resolved = resolve_loss_weights(weights or {}, teacher_names)
        self.teacher_weights = {name: resolved.get(name, 1.0) for name in teacher_names}

    def __call__(
        self, predictions: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        total = None
        for spec in self.heads:
            # Autocast may hand back bf16/fp16 logits; softmax and logs are done in float32.
            student = _at_least_float32(_lookup(predictions, spec.key, "predictions"))
            teacher = _at_least_float32(_lookup(targets, spec.key, "targets"))
            if spec.kind == "logits":
                term = classifier_kl(student, teacher, self.temperature)
            elif spec.kind == "multilabel_scores":
                term = multilabel_kl(student, teacher)
            elif spec.kind == "embedding":
                term = cosine_distance(student, teacher)
            else:
                mask = _person_mask(spec, targets)
                kl_sum, count = heatmap_kl_parts(student, teacher, mask)
                term = _keypoint_mean(kl_sum, count, masked=mask is not None, sum_over_ranks=self.sum_over_ranks,
                                      world_size=self.world_size)
                sum_key, count_key = part_keys(f"kd/{spec.key}")
                terms[sum_key], terms[count_key] = kl_sum.detach(), count.detach()
            terms[f"kd/{spec.key}"] = term
            weighted = self.teacher_weights[spec.teacher] * term
            total = weighted if total is None else total + weighted
        if total is None:
            raise ConfigError(
                "the distillation loss has no heads; the targets' teachers have no logits, scores, heatmaps or embeddings"
            )
        terms["loss"] = total
        return terms

    @property
    def term_names(self) -> list[str]:
        """The loss terms `__call__` returns, in a fixed order (the same on every rank); `part_keys` of the
        keypoint terms come besides."""
        return ["loss"] + [f"kd/{spec.key}" for spec in self.heads]

    def report_parts(self, terms: Mapping[str, torch.Tensor], clips: int) -> torch.Tensor:
        """(2, heads) float64 numerators and denominators of each `kd/` term for one step of `clips` clips:
        batch means give (value * clips, clips), keypoint terms (summed KL, samples counted). Summed over an
        epoch's steps and ranks, numerator / denominator is the term over all those clips at once; a keypoint
        mean weighted by clips would instead depend on how the persons fall into batches and ranks."""
        columns = []
        for spec in self.heads:
            name = f"kd/{spec.key}"
            if spec.kind == "heatmaps":
                numerator, denominator = (terms[key].detach().to(torch.float64) for key in part_keys(name))
            else:
                numerator = terms[name].detach().to(torch.float64) * clips
                denominator = torch.full_like(numerator, float(clips))
            columns.append(torch.stack([numerator, denominator]))
        return torch.stack(columns, dim=1)

    def weighted_total(self, figures: Mapping[str, float]) -> float:
        """`loss` from reported per-term figures ({"kd/<key>": value}), with the per-teacher weights."""
        return sum(self.teacher_weights[spec.teacher] * figures[f"kd/{spec.key}"] for spec in self.heads)


def part_keys(term_name: str) -> tuple[str, str]:
    """The extra keys under which `DistillationLoss` returns a keypoint term's summed KL and sample count."""
    return f"{term_name}:kl_sum", f"{term_name}:count"


def classifier_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C) logits each -> T^2 * mean over batch of KL(softmax(teacher/T) || softmax(student/T))."""
    student_log_probabilities = functional.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probabilities = functional.log_softmax(teacher_logits / temperature, dim=-1)
    divergence = functional.kl_div(
        student_log_probabilities, teacher_log_probabilities, log_target=True, reduction="batchmean"
    )
    return divergence * temperature**2


def multilabel_kl(student_logits: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """(B, C) logits and scores in [0, 1] -> mean over classes and batch of BCE(scores, sigmoid(logits)) - H(scores)."""
    scores = teacher_scores.clamp(0.0, 1.0)
    cross_entropy = functional.binary_cross_entropy_with_logits(student_logits, scores, reduction="none")
    own_entropy = -(torch.special.xlogy(scores, scores) + torch.special.xlogy(1 - scores, 1 - scores))
    return (cross_entropy - own_entropy).mean()


def cosine_distance(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) each -> mean over the batch of 1 - cos(student, teacher); an all-zero vector counts as cos 0."""
    return (1.0 - functional.cosine_similarity(student_embeddings, teacher_embeddings, dim=-1, eps=1e-8)).mean()


def heatmap_kl_parts(student_logits: torch.Tensor, teacher_maps: torch.Tensor,
                     person_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, G, G) logits and target maps, (B,) bool mask -> (sum over the masked samples of their KL, mean over
    the keypoints with a (non-zero) target map; the number of masked samples), as 0-dim tensors."""
    batch, keypoints = student_logits.shape[:2]
    student_log_probabilities = functional.log_softmax(student_logits.reshape(batch, keypoints, -1), dim=-1)  # (B, K, G*G)
    teacher = teacher_maps.reshape(batch, keypoints, -1).clamp_min(0.0)
    teacher = teacher / teacher.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    # xlogy gives 0 where the target is 0: no NaN for frames with nobody (all-zero maps).
    per_keypoint = (torch.special.xlogy(teacher, teacher) - teacher * student_log_probabilities).sum(dim=-1)  # (B, K)
    # Mean over the keypoints that have a target: one outside the student's crop has an all-zero map and says
    # nothing, so it must not pull the sample's term towards 0 (the heatmap is rendered per crop in stage two).
    has_target = (teacher_maps.reshape(batch, keypoints, -1) > 0).any(dim=-1).to(per_keypoint.dtype)  # (B, K)
    per_sample = (per_keypoint * has_target).sum(dim=-1) / has_target.sum(dim=-1).clamp_min(1)  # (B,)
    if person_mask is None:
        return per_sample.sum(), per_sample.new_full((), float(batch))  # a fill on the device, not a host copy
    # where, not a product: a left-out sample can never leak a NaN into the sum.
    kept = torch.where(person_mask.to(per_sample.device), per_sample, torch.zeros_like(per_sample))
    return kept.sum(), person_mask.to(per_sample.device).sum().to(per_sample.dtype)


def _keypoint_mean(kl_sum: torch.Tensor, count: torch.Tensor, *, masked: bool, sum_over_ranks: CountReducer | None,
                   world_size: int) -> torch.Tensor:
    """The training term: this process's mean without a mask or `sum_over_ranks`, else the global one (docstring)."""
    if not masked or sum_over_ranks is None:
        return kl_sum / count.clamp_min(1)
    # A copy: the all-reduce works in place, and `count` is also reported as this process's own.
    return kl_sum / sum_over_ranks(count.clone()).clamp_min(1) * world_size


def _person_mask(spec: HeadSpec, targets: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """(B,) bool: a person was seen in the window (the flag, averaged over its teacher frames, exceeds 0.5)."""
    if spec.mask_key is None:
        return None
    return _lookup(targets, spec.mask_key, "targets").reshape(-1) > PERSON_PRESENT_THRESHOLD


def _at_least_float32(values: torch.Tensor) -> torch.Tensor:
    return values if values.dtype == torch.float64 else values.float()


def _lookup(values: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in values:
        raise KeyError(f"distillation loss: {what} have no {key!r} (have: {', '.join(sorted(values))})")
    return values[key]


def parse_loss_weights(text: str) -> dict[str, float]:
    """"imagenet=1,coco-keypoints=0.5" -> {"imagenet": 1.0, "coco-keypoints": 0.5} (names resolved later)."""
    weights: dict[str, float] = {}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        name, separator, value = item.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ConfigError(f"--loss-weights item {item!r} is not TEACHER=WEIGHT (e.g. imagenet=1,coco-keypoints=0.5)")
        try:
            weight = float(value)
        except ValueError:
            raise ConfigError(f"--loss-weights: weight {value.strip()!r} for {name!r} is not a number") from None
        if not weight >= 0 or weight == float("inf"):
            raise ConfigError(f"--loss-weights: weight for {name!r} must be a finite number >= 0; got {value.strip()}")
        if name in weights:
            raise ConfigError(f"--loss-weights names {name!r} twice")
        weights[name] = weight
    return weights


def resolve_loss_weights(weights: Mapping[str, float], teacher_names: Sequence[str]) -> dict[str, float]:
    """Map each weight's name to a teacher: an exact name, else a unique prefix ("imagenet" ->
    "imagenet-efficientnet-lite0" when it is the only imagenet teacher). Unknown or ambiguous -> ConfigError."""
    resolved: dict[str, float] = {}
    for name, weight in weights.items():
        if name in teacher_names:
            teacher = name
        else:
            matches = [teacher_name for teacher_name in teacher_names if teacher_name.startswith(name)]
            if len(matches) != 1:
                problem = "matches several teachers" if matches else "names no teacher"
                candidates = matches or list(teacher_names)
                raise ConfigError(f"loss weight {name!r} {problem}; the targets' teachers are: {', '.join(candidates)}")
            teacher = matches[0]
        if teacher in resolved:
            raise ConfigError(f"loss weights give teacher {teacher!r} twice ({name!r} is one of them)")
        resolved[teacher] = float(weight)
    return resolved
