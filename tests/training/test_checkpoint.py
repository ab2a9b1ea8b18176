"""Contract: checkpoints are atomic, verified, retained, compatible-or-refused, and async-safe.

Unit level with a one-process DDP engine: corrupt, truncated or partial checkpoints are
skipped naming the file; only the newest ``keep`` remain; an incompatible manifest is
refused naming the difference; an asynchronous write stores the state as it was when
``save`` returned, even if training moves on at once. End to end: a 2-process run with
``async_write`` ends bitwise equal to the synchronous baseline.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from training import checkpoint as ck
from training.config import TrainConfig
from training.engines import DDPEngine
from training.errors import IncompatibleCheckpointError
from training.model import build_model, parameter_shapes


def _setup(tmp_path, keep=3, async_write=False):
    cfg = TrainConfig()
    model = build_model(cfg.model, 300, seed=0)
    engine = DDPEngine(model, cfg, torch.device("cpu"), world_size=1)
    ident = ck.RunIdentity(
        config=cfg.results_affecting(),
        config_hash=cfg.config_hash(),
        tokenizer_hash="t" * 64,
        shapes=parameter_shapes(model),
        engine="ddp",
        data_path="/lake/corpus",
        data_version=3,
    )
    saver = ck.Checkpointer(
        tmp_path / "checkpoints", ident, rank=0, world_size=1, keep=keep, async_write=async_write
    )
    return engine, ident, saver


def _train_step(engine):
    engine.step(torch.randint(0, 300, (2, 16)))


def test_retention_keeps_the_newest(tmp_path):
    engine, _, saver = _setup(tmp_path, keep=2)
    for step in range(1, 5):
        _train_step(engine)
        saver.save(step, engine, {"step": step})
    names = [p.name for p in ck.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_00000003", "step_00000004"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "optimizer.pt").write_bytes(b"garbage"), "does not match its sha256"),
        (lambda p: (p / "rng.pt").unlink(), "file rng.pt is missing"),
        (lambda p: (p / "manifest.json").unlink(), "manifest unreadable"),
        (lambda p: (p / "manifest.json").write_text("{trunc"), "manifest unreadable"),
    ],
    ids=["bad-checksum", "missing-file", "no-manifest", "truncated-manifest"],
)
def test_damaged_newest_is_skipped_naming_it(tmp_path, caplog, damage, reason):
    engine, _, saver = _setup(tmp_path)
    for step in (1, 2):
        _train_step(engine)
        saver.save(step, engine, {"step": step})
    newest = tmp_path / "checkpoints" / "step_00000002"
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        path, manifest = ck.newest_valid(tmp_path / "checkpoints")
    assert path.name == "step_00000001" and manifest["step"] == 1
    assert str(newest) in caplog.text and reason in caplog.text


def test_incompatible_manifest_names_the_difference(tmp_path):
    engine, ident, saver = _setup(tmp_path)
    saver.save(1, engine, {"step": 1})
    path, manifest = ck.newest_valid(tmp_path / "checkpoints")
    ck.check_compatible(path, manifest, ident)  # the same run: accepted
    other = TrainConfig(seed=5)
    changed = ck.RunIdentity(
        **{
            **ident.__dict__,
            "config": other.results_affecting(),
            "config_hash": other.config_hash(),
            "tokenizer_hash": "u" * 64,
        }
    )
    with pytest.raises(IncompatibleCheckpointError) as err:
        ck.check_compatible(path, manifest, changed)
    assert "seed (saved 0, now 5)" in str(err.value) and "tokenizer differs" in str(err.value)


def test_partial_staging_dirs_are_removed(tmp_path):
    engine, _, saver = _setup(tmp_path)
    saver.save(1, engine, {"step": 1})
    staging = tmp_path / "checkpoints" / ".tmp-step_00000002"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    ck.remove_staging(tmp_path / "checkpoints")
    assert (
        not staging.exists()
        and ck.newest_valid(tmp_path / "checkpoints")[0].name == "step_00000001"
    )


def test_async_write_stores_the_state_at_save_time(tmp_path):
    engine, _, saver = _setup(tmp_path, async_write=True)
    _train_step(engine)
    expected = {k: v.clone() for k, v in engine.model.state_dict().items()}
    saver.save(1, engine, {"step": 1})
    for _ in range(3):  # training moves on while the writer thread runs
        _train_step(engine)
    saver.wait()
    written = load_file(str(tmp_path / "checkpoints" / "step_00000001" / "model.safetensors"))
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    assert not torch.equal(written["lm_head.weight"], engine.model.state_dict()["lm_head.weight"])
    ck.verify(tmp_path / "checkpoints" / "step_00000001")


def test_async_checkpointing_run_matches_the_sync_baseline(tmp_path, corpus, baseline, tr):
    config = json.loads(json.dumps(tr.TINY))
    config["checkpoint"]["async_write"] = True
    path = tmp_path / "async.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    result = tr.run(tr.command(corpus, out, path), out)
    assert result.rc == 0, result.stderr[-4000:]
    assert result.summary()["config_hash"] == baseline.summary()["config_hash"]
    tr.assert_bitwise_equal(baseline.output, out)
    shutil.rmtree(out)
