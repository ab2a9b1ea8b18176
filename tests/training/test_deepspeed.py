"""Contract: the DeepSpeed engine (ZeRO-1, 2 processes, CPU) trains, checkpoints and resumes.

The resumed run restarts from the middle checkpoint (every rank reloads its ZeRO shard)
and must end bitwise equal to the uninterrupted run. Also: the shipped ZeRO configs get
batch size, clipping and optimiser from our config, and stages other than 1 and 2 are
refused.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from training.config import TrainConfig
from training.engines import deepspeed_config


def test_zero1_two_processes_trains_checkpoints_and_resumes(tmp_path, corpus, tiny_config, tr):
    first = tmp_path / "uninterrupted"
    cmd = tr.command(corpus, first, tiny_config, steps=16, every=8, extra=["--engine", "deepspeed"])
    result = tr.run(cmd, first)
    assert result.rc == 0, result.stderr[-4000:]
    summary = result.summary()
    assert summary["engine"] == "deepspeed" and summary["steps"] == 16
    losses = [loss for _, loss in summary["loss_history"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    newest = first / "checkpoints" / "step_00000016"
    manifest = json.loads((newest / "manifest.json").read_text())
    shards = [name for name in manifest["files"] if "optim_states" in name]
    assert len(shards) == 2, "each ZeRO rank writes its own optimiser shard, checksummed"

    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed)
    shutil.rmtree(resumed / "model")
    shutil.rmtree(resumed / "checkpoints" / "step_00000016")
    again = tr.run(
        tr.command(
            corpus, resumed, tiny_config, steps=16, every=8, extra=["--engine", "deepspeed"]
        ),
        resumed,
    )
    assert again.rc == 0, again.stderr[-4000:]
    assert again.summary()["resumed_from_step"] == 8
    assert "resumed from" in again.log(0)
    tr.assert_bitwise_equal(first, resumed)


@pytest.mark.parametrize("stage_file", [None, "zero2"])
def test_deepspeed_config_takes_batch_and_optimiser_from_ours(tmp_path, stage_file):
    path = None
    if stage_file:
        from importlib import resources

        path = str(resources.files("training").joinpath("deepspeed_zero2.json"))
    cfg = TrainConfig(engine="deepspeed", deepspeed_config=path)
    ds = deepspeed_config(cfg, world_size=2, device=torch.device("cpu"))
    assert ds["zero_optimization"]["stage"] == (2 if stage_file else 1)
    assert ds["train_batch_size"] == 2 * cfg.data.batch_size
    assert ds["optimizer"]["params"]["lr"] == cfg.optim.lr
    assert ds["gradient_clipping"] == cfg.optim.grad_clip
    assert ds["bf16"]["enabled"] is False


def test_deepspeed_stage_3_is_refused(tmp_path):
    path = tmp_path / "z3.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ValueError, match=r"stage=3 must be 1 or 2"):
        deepspeed_config(
            TrainConfig(engine="deepspeed", deepspeed_config=str(path)), 2, torch.device("cpu")
        )
