"""Contract: a 2-process gloo DDP run trains (the loss falls) and writes the model artifact.

The artifact is the shared contract: a Hugging Face directory that loads offline with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and generates, plus ``training_summary.json``
with the fields downstream steps read, and the data version pinned in it.
"""

from __future__ import annotations

import json

import deltalake
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ingestion.sample import generate_records
from training.elastic import committed_steps

SUMMARY_FIELDS = {
    "steps",
    "tokens",
    "final_loss",
    "wall_time_s",
    "data_path",
    "data_version",
    "config_hash",
    "seed",
    "world_size",
    "engine",
    "loss_history",
}


def test_two_process_ddp_run_trains_and_loss_falls(baseline):
    summary = baseline.summary()
    assert summary.keys() >= SUMMARY_FIELDS
    assert summary["steps"] == 60 and summary["world_size"] == 2 and summary["engine"] == "ddp"
    # 16 blocks a step, except the epoch's tail (every block is trained on, none dropped).
    sizes = [records[0]["size"] for records in committed_steps(baseline.output).values()]
    # (how many steps an epoch takes depends on the tokenizer; 60 steps span under 2 epochs)
    tails = [size for size in sizes if size != 16]
    assert len(sizes) == 60 and len(tails) <= 1 and all(0 < size < 16 for size in tails)
    assert summary["tokens"] == sum(sizes) * 32
    losses = [loss for _, loss in summary["loss_history"]]
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    assert "step 60/60 loss" in baseline.stdout
    assert (baseline.output / "logs" / "rank1.log").is_file()
    kept = sorted(p.name for p in (baseline.output / "checkpoints").iterdir())
    assert kept == ["step_00000040", "step_00000050", "step_00000060"]


def test_data_version_is_pinned_and_recorded(baseline, corpus):
    summary = baseline.summary()
    assert summary["data_path"] == str(corpus)
    assert summary["data_version"] == deltalake.DeltaTable(str(corpus)).version()
    run = json.loads((baseline.output / "run.json").read_text())
    manifest = json.loads(
        (baseline.output / "checkpoints" / "step_00000060" / "manifest.json").read_text()
    )
    assert run["data_version"] == manifest["data_version"] == summary["data_version"]
    assert run["config_hash"] == manifest["config_hash"] == summary["config_hash"]


def test_final_model_loads_offline_and_generates(baseline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = baseline.output / "model"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "training_summary.json",
    ):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin")), "weights must be safetensors only"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    prompt = next(generate_records(1, seed=99))["text"].split(" A:")[0] + " A:"
    inputs = tokenizer(prompt, return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert new.numel() > 0
    assert isinstance(tokenizer.decode(new, skip_special_tokens=True), str)
