"""Evaluation of a model artifact on the held-out split, and the promotion gate.

``evaluate(challenger_dir, data_path, data_version, config, champion_dir, champion_version)``
is the entry point; see ``report.py``. Metrics live in ``metrics.py``, the gate in
``gate.py``, the held-out sample rule in ``heldout.py``.

Names are imported on first use (PEP 562), so ``import evaluation.gate`` (the Dagster code
location does) stays free of torch and transformers until a model is actually scored.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvaluationConfig": "report",
    "EvaluationReport": "report",
    "evaluate": "report",
    "GateConfig": "gate",
    "GateDecision": "gate",
    "decide": "gate",
    "HeldoutDataError": "heldout",
    "HeldoutSample": "heldout",
    "load_heldout": "heldout",
    "MetricsConfig": "metrics",
    "ModelLoadError": "metrics",
    "ModelMetrics": "metrics",
    "evaluate_model": "metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"evaluation.{_EXPORTS[name]}"), name)
