"""Where a training run starts from: the champion's weights (warm start) or random init.

`choose_parent` resolves `TrainRunConfig.init` against the registry: `auto` warm-starts
from the champion when there is one whose shapes fit this run's model config (and says why
not otherwise), `champion` requires it, `scratch` never uses it. The parent is fetched
(digest-checked) into the run's own directory, so a retry of the run finds the same parent
even if the champion moved meanwhile. `run_seed` gives each run its own seed, derived from
the run id, so the seed varies across runs but a retry of one run resumes its checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from registry import CHAMPION, RegistryError
from registry.versions import ModelIntegrityError, fetch_model_dir


@dataclass(frozen=True)
class Parent:
    path: Path | None
    version: str | None
    reason: str


def run_seed(run_id: str) -> int:
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) % (2**31)


def _fits(parent: Path, config_file: str | None) -> str | None:
    """Why the parent's architecture differs from this run's model config, or `None`."""
    from training.config import load_config  # keeps torch-free imports for the code location

    model = load_config(Path(config_file) if config_file else None).model
    hf = json.loads((parent / "config.json").read_text())
    wanted = {
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads,
        "intermediate_size": model.intermediate_size,
        "max_position_embeddings": model.max_position_embeddings,
    }
    diffs = [f"{k} {hf.get(k)} != {v}" for k, v in wanted.items() if hf.get(k) != v]
    return "; ".join(diffs) or None


def choose_parent(context, config, mlflow_registry, output: Path) -> Parent:
    if config.init == "scratch":
        return Parent(None, None, "init: scratch")
    cache = output / "parent"
    try:
        if cache.is_dir() and any(cache.iterdir()):  # a retry of this run: the same parent
            version = sorted(p.name for p in cache.iterdir() if p.name.isdigit())[0]
        else:
            version = mlflow_registry.client().aliases().get(CHAMPION)
        if version is None:
            if config.init == "champion":
                raise dg.Failure("init: champion, but the registry has no champion yet")
            return Parent(None, None, "no champion: trained from scratch")
        path = fetch_model_dir(mlflow_registry.client(), version, cache)
    except (RegistryError, ModelIntegrityError) as exc:
        if config.init == "champion":
            raise dg.Failure(f"cannot fetch the champion to warm-start from: {exc}") from exc
        context.log.warning(f"training from scratch: cannot fetch the champion ({exc})")
        return Parent(None, None, f"champion unavailable ({exc}): trained from scratch")
    misfit = _fits(path, config.config_file)
    if misfit:
        if config.init == "champion":
            raise dg.Failure(
                f"champion v{version} does not fit this run's model config ({misfit}); "
                "set init: scratch, or train with the champion's model config"
            )
        context.log.warning(f"champion v{version} does not fit ({misfit}): training from scratch")
        return Parent(None, None, f"champion v{version} does not fit ({misfit}): from scratch")
    context.log.info(f"warm start from champion v{version} ({path})")
    return Parent(path, version, f"warm start from champion v{version}")
