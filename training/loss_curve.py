"""The training loss curve as a small PNG, for MLflow and the Dagster UI.

Rendered by rank 0 at the end of training from ``loss_history`` ([step, loss] pairs, the
same list ``training_summary.json`` keeps) to ``OUTPUT/loss_curve.png``: next to the model
directory, never inside it, because the model directory is the served artifact. The file is
written to a temporary name and renamed, so a crash mid-write never leaves a truncated PNG
that a reader would take for the curve. Matplotlib runs on the Agg backend (no display),
imported only when a curve is drawn, so training without it pays nothing at import time.
Figures stay small (about 12 KB for 300 steps): the Dagster asset embeds the PNG inline.

``python -m training.loss_curve OUTPUT`` draws the curve of a finished run from its
``model/training_summary.json``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

FILENAME = "loss_curve.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Above this the PNG is too heavy to inline in asset metadata.
MAX_INLINE_BYTES = 60_000


def curve_path(output: Path) -> Path:
    """Where a run writing to ``output`` keeps its loss curve."""
    return Path(output) / FILENAME


def render(history: Sequence[Sequence[float]], path: Path, title: str = "training loss") -> Path:
    """Draw ``history`` ([step, loss] pairs) as a line plot PNG at ``path``; returns ``path``."""
    points = [(int(step), float(loss)) for step, loss in history]
    if not points:
        raise ValueError(
            f"loss_history is empty: nothing to draw at {path}; train some steps first"
        )
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A bare Figure (not pyplot) keeps no global state between calls.
    fig = Figure(figsize=(5, 3), dpi=80)
    ax = fig.add_subplot()
    steps, losses = zip(*points, strict=True)
    ax.plot(steps, losses, linewidth=1.2, marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title} (final {losses[-1]:.4f})", fontsize=10)
    if min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")  # early spikes would otherwise flatten the interesting tail
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_MAGIC)) == PNG_MAGIC
    except OSError:
        return False


def markdown_image(path: Path, alt: str = "loss curve") -> str:
    """The PNG inlined as a markdown image (a data URI), as the Dagster UI renders it."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_MAGIC):
        raise ValueError(f"{path} is not a PNG file; render it again with training.loss_curve")
    if len(data) > MAX_INLINE_BYTES:
        raise ValueError(
            f"{path} is {len(data)} bytes, over {MAX_INLINE_BYTES} to inline; render a smaller figure"
        )
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m training.loss_curve OUTPUT", file=sys.stderr)
        return 2
    output = Path(args[0])
    summary_file = output / "model" / "training_summary.json"
    if not summary_file.is_file():
        print(f"no {summary_file}: is {output} the output of a finished run?", file=sys.stderr)
        return 1
    history = json.loads(summary_file.read_text(encoding="utf-8")).get("loss_history") or []
    print(render(history, curve_path(output)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
