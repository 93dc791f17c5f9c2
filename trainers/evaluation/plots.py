"""Figures of the evaluation."""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str) -> None:
    """Save a confusion-matrix heat map (rows: true emotion, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    figure, axes = plt.subplots(figsize=(4.8, 4.2))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_curves(log_path: Path, names: tuple[str, ...], output: Path, title: str) -> None:
    """Save one panel per logged metric of a Trainer log history (training values, not eval ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = json.loads(log_path.read_text())
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for axis, name in zip(axes, names):
        points = [(entry["step"], entry[name]) for entry in history if name in entry and "eval_" + name not in entry]
        if points:
            axis.plot(*zip(*points), marker=".")
        axis.set_title(name)
        axis.set_xlabel("step")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    plt.close(figure)
