"""Contract: ``--init-from PARENT`` warm-starts a run from a parent model (its tokenizer and
weights) and records it; a parent whose shapes do not fit the run's model config, or a directory
that is not a model, is refused with one clear ``error:`` line naming ``--init-from`` and what
differs, before anything is written."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file


def test_warm_start_takes_parent_tokenizer_and_weights(tr, baseline, corpus, tiny_config, tmp_path):
    parent = baseline.output / "model"
    output = tmp_path / "child"
    cmd = tr.command(corpus, output, tiny_config, nproc=1, steps=1, every=1, seed=5)
    result = tr.run(cmd + ["--init-from", str(parent)], output)
    assert result.rc == 0, result.stderr[-3000:]
    assert (output / "model" / "tokenizer.json").read_text() == (
        parent / "tokenizer.json"
    ).read_text()
    summary = result.summary()
    assert summary["init_from"] == str(parent) and summary["seed"] == 5
    assert json.loads((output / "run.json").read_text())["config"]["init_from"] == str(parent)
    # one small step from the parent: far closer to the parent than a fresh model is
    child, start = (
        load_file(output / "model" / "model.safetensors"),
        load_file(parent / "model.safetensors"),
    )
    moved = max((child[k] - start[k]).abs().max().item() for k in start)
    assert 0 < moved < 0.05
    assert "warm start from" in result.log()

    fresh = tmp_path / "fresh"
    result = tr.run(
        tr.command(corpus, fresh, tiny_config, nproc=1, steps=1, every=1, seed=5), fresh
    )
    other = load_file(fresh / "model" / "model.safetensors")
    assert max(torch.dist(other[k], start[k]).item() for k in start) > 1.0


def test_parent_that_does_not_fit_is_refused(tr, baseline, corpus, tmp_path):
    wider = dict(tr.TINY, model={**tr.TINY["model"], "hidden_size": 64, "num_heads": 2})
    config = tmp_path / "wider.json"
    config.write_text(json.dumps(wider))
    output = tmp_path / "child"
    cmd = tr.command(corpus, output, config, nproc=1, steps=1, every=1)
    result = tr.run(cmd + ["--init-from", str(baseline.output / "model")], output)
    assert result.rc != 0 and "error: --init-from=" in result.stderr, result.stderr[-2000:]
    assert "does not fit this run's model config" in result.stderr
    assert "model.embed_tokens.weight" in result.stderr
    assert not (output / "run.json").exists()

    result = tr.run(cmd + ["--init-from", str(tmp_path)], output)
    assert result.rc != 0 and "holds no model.safetensors" in result.stderr
