"""Contract: config files map onto typed dataclasses; the config hash covers what changes results.

Unknown keys and invalid values are refused naming the field; a model shape whose head
dimension vLLM cannot serve is refused naming the field, the value and the allowed head
dimensions; every preset has a shape vLLM serves. Checkpoint cadence,
retention and async writing do not change the hash (they may change on a resumed run),
while model, optimiser, data, seed and step count do.
"""

from __future__ import annotations

import json

import pytest

from training.config import PRESETS, VLLM_HEAD_DIMS, TrainConfig, load_config


def test_yaml_and_json_load_the_same_config(tmp_path):
    raw = {"model": {"hidden_size": 128, "num_heads": 4}, "data": {"seq_len": 32}}
    (tmp_path / "c.json").write_text(json.dumps(raw))
    (tmp_path / "c.yaml").write_text(
        "model:\n  hidden_size: 128\n  num_heads: 4\ndata:\n  seq_len: 32\n"
    )
    a, b = load_config(tmp_path / "c.json"), load_config(tmp_path / "c.yaml")
    assert a == b and a.model.hidden_size == 128 and a.data.seq_len == 32


def test_flags_override_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("max_steps: 10\nseed: 1\ncheckpoint:\n  every: 5\n")
    cfg = load_config(
        tmp_path / "c.yaml", max_steps=20, seed=None, checkpoint_every=7, engine="deepspeed"
    )
    assert (cfg.max_steps, cfg.seed, cfg.checkpoint.every, cfg.engine) == (20, 1, 7, "deepspeed")


def test_preset_with_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  preset: 125m\n  num_layers: 6\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.hidden_size == PRESETS["125m"].hidden_size and cfg.model.num_layers == 6
    assert cfg.model.dtype == "bfloat16"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  hidden_sise: 1\n", "unknown keys ['hidden_sise']"),
        ("epochs: 3\n", "unknown top-level keys ['epochs']"),
        ("model:\n  preset: huge\n", "model.preset='huge'"),
        ("model:\n  hidden_size: 30\n  num_heads: 4\n", "model.num_heads=4 must divide"),
        ("model:\n  num_heads: 2\n  num_kv_heads: 3\n", "model.num_kv_heads=3 must divide"),
        ("data:\n  seq_len: 1000\n", "data.seq_len=1000"),
        ("checkpoint:\n  keep: 0\n", "checkpoint.keep=0"),
        ("engine: deepspeed\ncheckpoint:\n  async_write: true\n", "checkpoint.async_write=True"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValueError) as err:
        load_config(tmp_path / "c.yaml")
    assert message in str(err.value)


def test_hash_covers_results_not_checkpoint_cadence():
    base = TrainConfig()
    same = load_config(None, checkpoint_every=7)
    assert base.config_hash() == same.config_hash()
    assert base.config_hash() != load_config(None, seed=1).config_hash()
    assert base.config_hash() != load_config(None, max_steps=301).config_hash()
    assert len(base.config_hash()) == 64


def test_head_dim_vllm_cannot_serve_is_refused_with_the_allowed_values(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  hidden_size: 64\n  num_heads: 4\n")
    with pytest.raises(ValueError) as err:
        load_config(tmp_path / "c.yaml")
    message = str(err.value)
    assert "model.num_heads=4" in message and "64 / 4 = 16" in message
    assert f"head_dim must be one of {list(VLLM_HEAD_DIMS)}" in message
    assert "num_heads one of [2, 1]" in message  # what to do instead, for this hidden_size


def test_preset_override_that_breaks_head_dim_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  preset: 125m\n  num_heads: 48\n")
    with pytest.raises(ValueError, match="768 / 48 = 16"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_a_head_dim_vllm_serves(name):
    preset = PRESETS[name]
    assert preset.hidden_size // preset.num_heads in VLLM_HEAD_DIMS
