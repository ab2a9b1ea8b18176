"""The `trained_model` asset: a model trained by torchrun on the pinned train split.

The asset is a thin launcher: `training` (the torchrun program) does the work and
reports back through Dagster Pipes (progress lines as logs; model path, data version,
steps, final loss, throughput and wall time as materialization metadata). The loss curve
that rank 0 draws is added here, inline as a markdown image plus its path, so the Dagster
UI shows it without the large image travelling through the Pipes channel. With
`hosts` in the `trainer` resource it runs one torchrun agent per host
(`training.multinode`) and reports the group's world sizes and recoveries. The output
directory is `$MLOPS_HOME/training/<run_id>/`, so a retry of the same run (the
`RetryPolicy` below) resumes from that run's checkpoints instead of starting over,
while a new run trains a new model. Safe to re-run: nothing outside that directory is
written, and a finished directory is only re-exported.
"""

import os
from pathlib import Path
from typing import Literal

import dagster as dg

from observability.tracing import child_env
from orchestration.defs.registry.resources import MlflowResource
from orchestration.resources import MlopsHome
from orchestration.tracing import traced_step
from registry.config import RegistryConfig
from training import loss_curve

from .parent import choose_parent, run_seed
from .resources import TrainingLauncher


class TrainRunConfig(dg.Config):
    max_steps: int = 1500
    """Optimiser steps of the run. The demo recipe: with the tiny preset, digit-level tokens
    and 1500 steps the demo's first champion answers 0.30 of its suite (300 steps: 0.10).
    About 3M tokens: some 85 s at the tokens/s benchmarks/train_throughput.py measured."""
    nproc: int = 2
    """Processes torchrun starts on this host (on each host of a multi-host job)."""
    engine: Literal["ddp", "deepspeed"] = "ddp"
    seed: int | None = None
    """Pinned seed; empty: one derived from the run id (varies across runs, recorded, and the
    same on a retry of this run, so the retry resumes its checkpoints)."""
    init: Literal["auto", "scratch", "champion"] = "auto"
    """`champion`: warm-start from the champion's weights (fine-tune on the current data);
    `scratch`: random init; `auto`: the champion when there is one whose shapes fit."""
    checkpoint_every: int = 50
    """Steps between checkpoints (one is always written at the end)."""
    max_restarts: int = 3
    """How often torchrun restarts the workers after a crash, within one attempt."""
    config_file: str | None = None
    """JSON/YAML training config (model size, optimiser, data); empty uses the tiny default."""


@dg.asset(
    group_name="training",
    deps=[dg.AssetKey("corpus_split")],
    kinds={"pytorch"},
    owners=["team:ml-platform"],
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10),
)
@traced_step
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainRunConfig,
    mlops: MlopsHome,
    trainer: TrainingLauncher,
    mlflow_registry: MlflowResource,
) -> dg.MaterializeResult:
    """A causal language model (Hugging Face directory) trained on the corpus train split.

    The data version (Delta table version) is pinned when the run first starts and
    recorded with the model, together with the config hash, seed and world size. By default
    it fine-tunes the champion (warm start) when there is one; the choice, the parent version
    and the seed are materialization metadata and, once registered, lineage tags.
    """
    output = mlops.path("training", context.run_id)
    output.mkdir(parents=True, exist_ok=True)
    seed = config.seed if config.seed is not None else run_seed(context.run_id)
    parent = choose_parent(context, config, mlflow_registry, output)
    args = dict(
        data=mlops.lake() / "corpus",
        output=output,
        nproc=config.nproc,
        max_steps=config.max_steps,
        checkpoint_every=config.checkpoint_every,
        seed=seed,
        engine=config.engine,
        max_restarts=config.max_restarts,
        config_file=config.config_file,
        init_from=str(parent.path) if parent.path else None,
        # The training run's metrics and loss curve land in the same MLflow store as the
        # registry, so a model version links to the run that made it.
        mlflow_uri=RegistryConfig.resolve(mlops.root()).tracking_uri,
    )
    if trainer.hosts:
        command = trainer.multihost_command(run_id=context.run_id, **args)
    else:
        command = trainer.command(**args)
    context.log.info(f"launching: {' '.join(command)}")
    # Every trainer log line carries the run id (see observability.logs), and with the
    # step's span as TRACEPARENT every rank's span joins the run's trace.
    env = {"DAGSTER_RUN_ID": context.run_id, **child_env()}
    if config.nproc > 1 and not trainer.omp_num_threads and "OMP_NUM_THREADS" not in os.environ:
        # torchrun's own choice for several workers per host, made here so that torchrun
        # does not print a banner about having made it
        env["OMP_NUM_THREADS"] = "1"
    result = (
        trainer.client().run(command=command, context=context, env=env).get_materialize_result()
    )
    extra = loss_curve_metadata(loss_curve.curve_path(output))
    if not extra:
        context.log.warning(f"no loss curve at {loss_curve.curve_path(output)}")
    lineage = {
        "seed": seed,
        "seed_pinned": config.seed is not None,
        "init": "warm_start" if parent.path else "scratch",
        "parent_version": parent.version or "none",
        "init_reason": parent.reason,
    }
    return dg.MaterializeResult(
        asset_key=result.asset_key,
        metadata={**(result.metadata or {}), **extra, **lineage},
        check_results=result.check_results,
        data_version=result.data_version,
        tags=result.tags,
    )


def loss_curve_metadata(path: Path) -> dict[str, dg.MetadataValue]:
    """The loss curve PNG at `path` as asset metadata; empty when there is no usable PNG."""
    try:
        image = loss_curve.markdown_image(path)
    except (OSError, ValueError):
        return {}
    return {
        "loss_curve": dg.MetadataValue.md(image),
        "loss_curve_path": dg.MetadataValue.path(str(path)),
    }
