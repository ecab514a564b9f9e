"""Each distillation term against a naive formula written out with loops, options included."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from distinit.distill.heads import HeadSpec
from distinit.pipeline.training.distributed import DistributedContext
from distinit.distill.losses import DistillationLoss, parse_loss_weights, part_keys, resolve_loss_weights
from distinit.distill.train import evaluate
from distinit.pipeline.errors import ConfigError

CLASSIFIER = HeadSpec("imagenet-efficientnet-lite0/logits", "logits", (10,))
OBJECTS = HeadSpec("coco-objects/scores", "multilabel_scores", (6,))
KEYPOINTS = HeadSpec("coco-keypoints/heatmaps", "heatmaps", (3, 4, 4), mask_key="coco-keypoints/person_present")
EMBEDDING = HeadSpec("clip/embedding", "embedding", (5,))
HEADS = [CLASSIFIER, OBJECTS, KEYPOINTS, EMBEDDING]
BATCH = 3


def _naive_log_softmax(values: list[float]) -> list[float]:
    log_total = math.log(sum(math.exp(value) for value in values))
    return [value - log_total for value in values]


def naive_classifier_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    total = 0.0
    for student_row, teacher_row in zip(student.tolist(), teacher.tolist()):
        log_q = _naive_log_softmax([value / temperature for value in student_row])
        log_p = _naive_log_softmax([value / temperature for value in teacher_row])
        total += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))
    return total / len(student) * temperature**2


def naive_objects_term(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Plain BCE minus the targets' own entropy (0 * log 0 = 0)."""

    def x_log_y(x: float, y: float) -> float:
        return 0.0 if x == 0 else x * math.log(y)

    values = []
    for student_row, teacher_row in zip(student.tolist(), teacher.tolist()):
        for logit, score in zip(student_row, teacher_row):
            probability = 1 / (1 + math.exp(-logit))
            bce = -(score * math.log(probability) + (1 - score) * math.log(1 - probability))
            entropy = -(x_log_y(score, score) + x_log_y(1 - score, 1 - score))
            values.append(bce - entropy)
    return sum(values) / len(values)


def naive_keypoint_term(student: torch.Tensor, teacher: torch.Tensor, present: list[bool]) -> float:
    per_sample = []
    for sample in range(len(student)):
        if not present[sample]:
            continue
        per_keypoint = []
        for keypoint in range(student.shape[1]):
            log_q = _naive_log_softmax(student[sample, keypoint].flatten().tolist())
            target = teacher[sample, keypoint].flatten().tolist()
            target = [value / sum(target) for value in target]
            per_keypoint.append(sum(p * (math.log(p) - lq) for p, lq in zip(target, log_q) if p > 0))
        per_sample.append(sum(per_keypoint) / len(per_keypoint))
    return sum(per_sample) / len(per_sample) if per_sample else 0.0


def naive_embedding_term(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean over the batch of 1 - cos(student, teacher)."""
    distances = []
    for student_row, teacher_row in zip(student.tolist(), teacher.tolist()):
        dot = sum(a * b for a, b in zip(student_row, teacher_row))
        norms = math.sqrt(sum(a * a for a in student_row)) * math.sqrt(sum(b * b for b in teacher_row))
        distances.append(1 - dot / norms)
    return sum(distances) / len(distances)


def _inputs(present: list[bool]) -> tuple[dict, dict]:
    predictions = {
        CLASSIFIER.key: torch.randn(BATCH, 10, dtype=torch.float64) * 3,
        OBJECTS.key: torch.randn(BATCH, 6, dtype=torch.float64) * 2,
        KEYPOINTS.key: torch.randn(BATCH, 3, 4, 4, dtype=torch.float64),
        EMBEDDING.key: torch.randn(BATCH, 5, dtype=torch.float64),
    }
    scores = torch.rand(BATCH, 6, dtype=torch.float64)
    scores[0, :2] = torch.tensor([0.0, 1.0])  # hard 0 and 1 scores must not give NaN
    heatmaps = torch.rand(BATCH, 3, 4, 4, dtype=torch.float64)
    heatmaps[0, 0, 1:, :] = 0.0  # a sharp peak: zero-probability cells
    heatmaps = heatmaps / heatmaps.sum(dim=(2, 3), keepdim=True)
    heatmaps[1] *= 2 / 3  # a window where one frame in three had nobody: sums to 2/3
    present_tensor = torch.tensor(present, dtype=torch.float64)
    heatmaps[~present_tensor.bool()] = 0.0  # nobody seen: all-zero maps, as the teachers write them
    targets = {
        CLASSIFIER.key: torch.randn(BATCH, 10, dtype=torch.float64) * 3,
        OBJECTS.key: scores,
        KEYPOINTS.key: heatmaps,
        KEYPOINTS.mask_key: present_tensor,
        EMBEDDING.key: torch.randn(BATCH, 5, dtype=torch.float64) * 4,  # unnormalised, as CLIP's are stored
    }
    for value in predictions.values():
        value.requires_grad_(True)
    return predictions, targets


def test_every_term_and_the_weighted_sum_match_naive_formulas():
    predictions, targets = _inputs(present=[True, True, False])
    loss = DistillationLoss(HEADS, temperature=3.0, weights={"imagenet": 2.0, "coco-keypoints": 0.5, "clip": 0.25})
    terms = loss(predictions, targets)
    expected_classifier = naive_classifier_term(predictions[CLASSIFIER.key].detach(), targets[CLASSIFIER.key], 3.0)
    expected_objects = naive_objects_term(predictions[OBJECTS.key].detach(), targets[OBJECTS.key])
    expected_keypoints = naive_keypoint_term(
        predictions[KEYPOINTS.key].detach(), targets[KEYPOINTS.key], [True, True, False]
    )
    assert set(terms) == {f"kd/{spec.key}" for spec in HEADS} | {"loss"} | set(part_keys(f"kd/{KEYPOINTS.key}"))
    kl_sum, count = (terms[key].item() for key in part_keys(f"kd/{KEYPOINTS.key}"))
    assert count == 2 and kl_sum / count == pytest.approx(expected_keypoints, rel=1e-9)
    assert terms[f"kd/{CLASSIFIER.key}"].item() == pytest.approx(expected_classifier, rel=1e-9)
    assert terms[f"kd/{OBJECTS.key}"].item() == pytest.approx(expected_objects, rel=1e-9)
    assert terms[f"kd/{KEYPOINTS.key}"].item() == pytest.approx(expected_keypoints, rel=1e-9)
    expected_embedding = naive_embedding_term(predictions[EMBEDDING.key].detach(), targets[EMBEDDING.key])
    assert terms[f"kd/{EMBEDDING.key}"].item() == pytest.approx(expected_embedding, rel=1e-9)
    # coco-objects is not named, so it weighs 1.
    expected_total = 2.0 * expected_classifier + 1.0 * expected_objects + 0.5 * expected_keypoints + 0.25 * expected_embedding
    assert terms["loss"].item() == pytest.approx(expected_total, rel=1e-9)
    terms["loss"].backward()
    for value in predictions.values():
        assert torch.isfinite(value.grad).all()
    # The sample with nobody in it gets no keypoint gradient.
    assert predictions[KEYPOINTS.key].grad[2].abs().sum() == 0


def test_keypoints_outside_the_crop_do_not_dilute_the_keypoint_term():
    predictions, targets = _inputs(present=[True] * BATCH)
    student, maps = predictions[KEYPOINTS.key].detach(), targets[KEYPOINTS.key].clone()
    maps[0, 1] = 0.0  # keypoint 1 of sample 0 fell outside the student's crop: an all-zero map
    targets[KEYPOINTS.key] = maps
    term = DistillationLoss([KEYPOINTS])(predictions, targets)["loss"].item()
    log_probabilities = torch.log_softmax(student.reshape(BATCH, 3, -1), dim=-1)
    teacher = maps.reshape(BATCH, 3, -1)
    teacher = teacher / teacher.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    per_keypoint = (torch.special.xlogy(teacher, teacher) - teacher * log_probabilities).sum(dim=-1)  # (B, 3)
    first = (per_keypoint[0, 0] + per_keypoint[0, 2]) / 2  # the two keypoints it has, not three
    expected = (first + per_keypoint[1:].mean(dim=1).sum()) / BATCH
    assert term == pytest.approx(expected.item(), rel=1e-9)


def test_temperature_squared_factor():
    predictions, targets = _inputs(present=[True] * BATCH)
    student, teacher = predictions[CLASSIFIER.key].detach(), targets[CLASSIFIER.key]
    for temperature in (1.0, 3.0):
        term = DistillationLoss([CLASSIFIER], temperature=temperature)(predictions, targets)["loss"].item()
        # The naive formula without its T^2 factor: the loss must be exactly T^2 times that KL.
        plain_kl = naive_classifier_term(student, teacher, temperature) / temperature**2
        assert term == pytest.approx(temperature**2 * plain_kl, rel=1e-9)
        assert plain_kl > 0


def test_objects_term_has_the_gradient_of_plain_binary_cross_entropy():
    predictions, targets = _inputs(present=[True] * BATCH)
    DistillationLoss([OBJECTS])(predictions, targets)["loss"].backward()
    ours = predictions[OBJECTS.key].grad.clone()
    logits = predictions[OBJECTS.key].detach().clone().requires_grad_(True)
    torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), targets[OBJECTS.key]).backward()
    torch.testing.assert_close(ours, logits.grad)


def test_a_perfect_student_scores_zero_on_every_term():
    _, targets = _inputs(present=[True, True, True])
    targets[KEYPOINTS.key] = targets[KEYPOINTS.key] * 0.5 + 0.5 / 16  # strictly positive maps
    predictions = {
        CLASSIFIER.key: targets[CLASSIFIER.key] + 7.0,  # softmax ignores a shift
        OBJECTS.key: torch.logit(targets[OBJECTS.key].clamp(1e-12, 1 - 1e-12)),
        KEYPOINTS.key: torch.log(targets[KEYPOINTS.key]),
        EMBEDDING.key: targets[EMBEDDING.key] * 0.3,  # the cosine ignores length
    }
    loss = DistillationLoss(HEADS, temperature=2.0)
    terms = loss(predictions, targets)
    for name in loss.term_names:
        assert abs(terms[name].item()) < 1e-9, name


def test_no_person_in_the_batch_gives_zero_and_finite_gradients():
    predictions, targets = _inputs(present=[False] * BATCH)
    terms = DistillationLoss([KEYPOINTS], weights={"coco-keypoints": 0.5})(predictions, targets)
    assert terms["loss"].item() == 0.0
    terms["loss"].backward()
    gradient = predictions[KEYPOINTS.key].grad
    assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() == 0


def test_low_precision_predictions_are_computed_in_float32():
    predictions, targets = _inputs(present=[True, False, True])
    low = {key: value.detach().to(torch.bfloat16) for key, value in predictions.items()}
    targets = {key: value.float() for key, value in targets.items()}
    terms = DistillationLoss(HEADS, temperature=3.0)(low, targets)
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])


def test_parse_and_resolve_loss_weights():
    assert parse_loss_weights("imagenet=1, coco-keypoints=0.5") == {"imagenet": 1.0, "coco-keypoints": 0.5}
    assert parse_loss_weights("") == {}
    for bad, message in [("imagenet", "TEACHER=WEIGHT"), ("imagenet=x", "not a number"),
                         ("imagenet=-1", ">= 0"), ("a=1,a=2", "twice"), ("a=nan", ">= 0")]:
        with pytest.raises(ConfigError, match=message):
            parse_loss_weights(bad)
    teachers = ["coco-keypoints", "coco-objects", "imagenet-efficientnet-lite0"]
    assert resolve_loss_weights({"imagenet": 2, "coco-objects": 0}, teachers) == {
        "imagenet-efficientnet-lite0": 2.0, "coco-objects": 0.0,
    }
    with pytest.raises(ConfigError, match="matches several teachers"):
        resolve_loss_weights({"coco": 1}, teachers)
    with pytest.raises(ConfigError, match="names no teacher"):
        DistillationLoss(HEADS, weights={"places365": 1})
    with pytest.raises(ConfigError, match="temperature"):
        DistillationLoss(HEADS, temperature=0)


def test_keypoint_term_with_the_global_count_equals_one_process_over_the_concatenated_batch():
    """Two ranks holding halves of one batch: each returns its sum / global count * world size. DDP averages
    gradients (and we average the reported values) over ranks, which must give the one-process loss and gradient."""
    present = [True, False, True, True, False, True]
    halves = [slice(0, 2), slice(2, 6)]  # unequal person counts: 1 and 3
    logits = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    heatmaps = torch.rand(6, 3, 4, 4, dtype=torch.float64)
    flags = torch.tensor(present, dtype=torch.float64)
    whole = logits.clone().requires_grad_(True)
    single = DistillationLoss([KEYPOINTS])({KEYPOINTS.key: whole}, {KEYPOINTS.key: heatmaps, KEYPOINTS.mask_key: flags})
    single["loss"].backward()
    counts = [flags[half].sum() for half in halves]
    rank_losses, rank_gradients = [], []
    for rank, half in enumerate(halves):
        other = counts[1 - rank]
        # Stands in for an all-reduce (sum) of the count over the two ranks.
        loss = DistillationLoss([KEYPOINTS], sum_over_ranks=lambda count, other=other: count + other, world_size=2)
        mine = logits[half].clone().requires_grad_(True)
        terms = loss({KEYPOINTS.key: mine}, {KEYPOINTS.key: heatmaps[half], KEYPOINTS.mask_key: flags[half]})
        terms["loss"].backward()
        rank_losses.append(terms["loss"].item())
        rank_gradients.append(mine.grad / 2)  # DDP's average over 2 ranks
    assert sum(rank_losses) / 2 == pytest.approx(single["loss"].item(), rel=1e-12)
    torch.testing.assert_close(torch.cat(rank_gradients), whole.grad)
    # Each rank's own mean (the old normalisation) differs here: the halves have 1 and 3 people.
    own_means = [DistillationLoss([KEYPOINTS])({KEYPOINTS.key: logits[half]},
                                               {KEYPOINTS.key: heatmaps[half], KEYPOINTS.mask_key: flags[half]})["loss"]
                 for half in halves]
    assert sum(value.item() for value in own_means) / 2 != pytest.approx(single["loss"].item(), rel=1e-6)


def test_term_names_are_the_keys_returned():
    predictions, targets = _inputs(present=[True, False, True])
    loss = DistillationLoss(HEADS)
    returned = sorted(loss(predictions, targets))
    assert returned == sorted(loss.term_names + list(part_keys(f"kd/{KEYPOINTS.key}"))) and loss.term_names[0] == "loss"


class LookUpStudent(torch.nn.Module):
    """(B,) sample indices -> each sample's fixed predictions: a student whose outputs do not depend on batching."""

    def __init__(self, predictions: dict[str, torch.Tensor]):
        super().__init__()
        self.predictions = predictions

    def forward(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: value[indices] for key, value in self.predictions.items()}


def test_reported_keypoint_loss_is_the_whole_data_figure_for_any_batch_size():
    """The held-out (and logged training) keypoint figure is KL summed over the persons / persons, over the whole
    epoch: batches of any size give the figure of the whole data in one batch. A clip-weighted mean of each
    batch's own keypoint mean (the old report) depends on how the persons fall into batches."""
    generator = torch.Generator().manual_seed(2)
    present = [True, False, True, True, False, True, True]
    count = len(present)
    predictions = {CLASSIFIER.key: torch.randn(count, 10, generator=generator) * 3,
                   KEYPOINTS.key: torch.randn(count, 3, 4, 4, generator=generator)}
    heatmaps = torch.rand(count, 3, 4, 4, generator=generator)
    heatmaps[~torch.tensor(present)] = 0.0
    targets = {CLASSIFIER.key: torch.randn(count, 10, generator=generator) * 3, KEYPOINTS.key: heatmaps,
               KEYPOINTS.mask_key: torch.tensor(present, dtype=torch.float32)}
    loss = DistillationLoss([CLASSIFIER, KEYPOINTS], temperature=2.0, weights={"coco-keypoints": 0.5})
    whole = loss(predictions, targets)
    model = LookUpStudent(predictions)
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    keypoint_name = f"kd/{KEYPOINTS.key}"

    def batches(size: int) -> list[dict]:
        return [{"video": torch.arange(start, min(start + size, count)),
                 "targets": {key: value[start:start + size] for key, value in targets.items()}}
                for start in range(0, count, size)]

    agreeing = (predictions[CLASSIFIER.key].argmax(1) == targets[CLASSIFIER.key].argmax(1)).float().mean().item()
    teacher_top = targets[CLASSIFIER.key].argmax(1).tolist()
    student_top5 = [sorted(range(10), key=lambda c: -row[c])[:5] for row in predictions[CLASSIFIER.key].tolist()]
    agreeing_top5 = sum(top in five for top, five in zip(teacher_top, student_top5)) / count
    assert agreeing < agreeing_top5 < 1.0  # the fixture can tell the two apart
    for size in (1, 2, 3, count):
        reported = evaluate(model, batches(size), loss, contextlib.nullcontext(), context, CLASSIFIER.key)
        assert reported[f"val_{keypoint_name}"] == pytest.approx(whole[keypoint_name].item(), rel=1e-6), size
        assert reported["val_loss"] == pytest.approx(whole["loss"].item(), rel=1e-6), size
        assert reported["val_agreement_top1"] == pytest.approx(agreeing)
        assert reported["val_agreement_top5"] == pytest.approx(agreeing_top5) and reported["val_clips"] == count
    by_clips = [(loss(model(batch["video"]), batch["targets"])[keypoint_name].item(), len(batch["video"]))
                for batch in batches(2)]
    old_report = sum(value * clips for value, clips in by_clips) / count
    assert old_report != pytest.approx(whole[keypoint_name].item(), rel=1e-3)
