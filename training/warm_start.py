"""Warm start: begin training from a parent model's weights (the champion) instead of noise.

A warm-started run fine-tunes the parent on the current data version: it takes the parent's
tokenizer (so token ids mean what they meant to the parent) and its weights, then trains as
usual. The parent must have the shapes this run's model config builds; ``check_parent`` says
precisely what differs, so a launcher can fall back to training from scratch or refuse.
Weights load from safetensors only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from training.errors import TrainingInputError

WEIGHTS = "model.safetensors"


def parent_shapes(parent: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of the parent's weights, read from the safetensors header only."""
    path = Path(parent) / WEIGHTS
    if not path.is_file() or not (Path(parent) / "tokenizer.json").is_file():
        raise TrainingInputError(
            "--init-from",
            str(parent),
            f"holds no {WEIGHTS} and tokenizer.json; point it at a model directory written "
            "by training (or downloaded from the registry)",
        )
    with safe_open(str(path), framework="pt") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


def check_parent(parent: Path, shapes: dict[str, list[int]]) -> None:
    """Refuse a parent whose weights do not fit the model this run builds."""
    have = parent_shapes(parent)
    problems = [
        f"{name} (parent {have.get(name)}, run {shape})"
        for name, shape in sorted(shapes.items())
        if have.get(name) != shape
    ]
    problems += [f"{name} (parent only)" for name in sorted(set(have) - set(shapes))]
    if problems:
        raise TrainingInputError(
            "--init-from",
            str(parent),
            "does not fit this run's model config: "
            + "; ".join(problems[:5])
            + ". Train from scratch, or use the parent's model config",
        )


def load_parent_weights(model: torch.nn.Module, parent: Path) -> None:
    model.load_state_dict(load_file(str(Path(parent) / WEIGHTS)), strict=True)
