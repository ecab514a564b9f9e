"""PNG plots for a comparison: training curves per init and the best model's confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from distinit.evaluate.results import EvalResult  # noqa: E402


def mean_curve(result: EvalResult, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, mean of `key` over the result's runs at each epoch)."""
    curves = [[point[key] for point in run.curves] for run in result.runs if run.curves]
    length = min(len(curve) for curve in curves)
    values = np.mean([curve[:length] for curve in curves], axis=0)
    return np.arange(1, length + 1), values


def plot_curves(labels: Sequence[str], results: Sequence[EvalResult], path: Path) -> Path:
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for label, result in zip(labels, results):
        epochs, loss = mean_curve(result, "train_loss")
        loss_axis.plot(epochs, loss, marker="o", markersize=3, label=label)
        epochs, accuracy = mean_curve(result, "train_clip_top1")
        accuracy_axis.plot(epochs, 100 * accuracy, marker="o", markersize=3, label=label)
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="finetuning loss (mean over runs)")
    accuracy_axis.set(xlabel="epoch", ylabel="training clip top-1 (%)", title="training accuracy (mean over runs)")
    loss_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], title: str, path: Path) -> Path:
    """Rows: true class; columns: predicted; each row normalised to sum to 1 (counts written in cells)."""
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = confusion / np.maximum(rows, 1)
    size = max(5.0, 0.45 * len(class_names) + 2.5)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    axis.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    if len(class_names) <= 20:
        for row in range(len(class_names)):
            for column in range(len(class_names)):
                count = int(confusion[row, column])
                if count:
                    colour = "white" if normalised[row, column] > 0.5 else "black"
                    axis.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
