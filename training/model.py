"""The model: a ``transformers.LlamaForCausalLM`` sized by ``ModelConfig``, and its export.

Llama is chosen because vLLM and the embedded engine both serve it. Input and output
embeddings are not tied, so the weights map one name to one tensor and save as plain
safetensors in checkpoints. ``export_model`` writes the model artifact contract
(config, safetensors weights, tokenizer, generation config, training summary) to a temp
directory and renames it into place, so readers never see half a model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from training.config import ModelConfig
from training.fsutil import fsync_tree
from training.tokenizer import save_tokenizer


def build_model(cfg: ModelConfig, vocab_size: int, seed: int) -> LlamaForCausalLM:
    """Build the model with weights drawn from ``seed``, identical on every rank."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        attention_dropout=cfg.attention_dropout,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def parameter_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(p.shape) for name, p in model.state_dict().items()}


def export_model(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    summary: dict[str, Any],
    destination: Path,
) -> None:
    """Write the model artifact to ``destination`` atomically (temp dir, fsync, rename)."""
    tmp = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(tmp), safe_serialization=True)
    save_tokenizer(tokenizer, tmp)  # with the chat template vLLM needs for chat requests
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=32,
        do_sample=False,
    ).save_pretrained(str(tmp))
    (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    fsync_tree(tmp)
    if destination.exists():
        # A finished run exported before (e.g. a retry after success): swap the new one in.
        old = destination.with_name(destination.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        destination.rename(old)
        tmp.rename(destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(destination)
