"""A tiny reference model in the model-artifact format, built and trained offline in seconds.

``build_reference_model(out, train_steps=0)`` writes a Hugging Face directory (Llama
config, safetensors weights, byte-level BPE tokenizer trained on the sample corpus,
generation config, ``training_summary.json``) that loads with ``AutoModelForCausalLM``
and ``AutoTokenizer`` without network access. With ``train_steps=0`` the weights are
random: a model that must fail the evaluation gate. With a few hundred steps on the
sample tasks it learns enough to pass it. Smoke tests, the gate's calibration and the
offline demo use it where a torchrun-trained model is not at hand.

Every record is encoded as ``<s> text </s>``, so a trained model ends its answer with
end-of-sequence, which is where evaluation stops reading a generated answer.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from ingestion.sample import generate_records
from training.config import ModelConfig
from training.model import build_model

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


@dataclass(frozen=True)
class ReferenceModelConfig:
    vocab_size: int = 384
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2  # head_dim 32: a shape vLLM serves (training.config.VLLM_HEAD_DIMS)
    max_positions: int = 64
    train_steps: int = 0
    batch_size: int = 32
    learning_rate: float = 3e-3
    corpus_records: int = 4000
    seed: int = 0  # weights and batch order (and the data, unless data_seed is set)
    data_seed: int | None = None  # the corpus and tokenizer; set it to vary only the seed


def _train_tokenizer(lines: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    # The tokenizer adds BOS only: prompts must not end in EOS, training appends it itself.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, bos), (EOS, eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def _batches(ids: list[list[int]], cfg: ReferenceModelConfig, pad_id: int):
    rng = random.Random(cfg.seed)
    while True:
        batch = rng.sample(ids, cfg.batch_size)
        width = max(len(x) for x in batch)
        inputs = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, seq in enumerate(batch):
            inputs[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
        yield inputs, labels, (labels != -100).long()


def build_reference_model(out: Path, config: ReferenceModelConfig | None = None) -> Path:
    """Write the reference model into ``out`` (created) and return ``out``.

    Idempotent: if ``out`` already holds a model built with the same config it is reused,
    which lets several test modules share one trained model.
    """
    cfg = config or ReferenceModelConfig()
    summary_path = out / "training_summary.json"
    if summary_path.exists():
        previous = json.loads(summary_path.read_text())
        if previous.get("reference_config") == asdict(cfg):
            return out
    torch.manual_seed(cfg.seed)
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    lines = [r["text"] for r in generate_records(cfg.corpus_records, seed=data_seed + 1)]
    tokenizer = _train_tokenizer(lines, cfg.vocab_size)
    model = build_model(
        ModelConfig(
            hidden_size=cfg.hidden_size,
            num_layers=cfg.layers,
            num_heads=cfg.heads,
            num_kv_heads=cfg.heads,
            intermediate_size=cfg.hidden_size * 4,
            max_position_embeddings=cfg.max_positions,
        ),
        vocab_size=len(tokenizer),
        seed=cfg.seed,
    )
    started, tokens, loss_value = time.perf_counter(), 0, float("nan")
    if cfg.train_steps:
        encoded = [tokenizer(line)["input_ids"] + [tokenizer.eos_token_id] for line in lines]
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
        model.train()
        batches = _batches(encoded, cfg, tokenizer.pad_token_id)
        for _ in range(cfg.train_steps):
            inputs, labels, mask = next(batches)
            loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tokens += int(mask.sum())
            loss_value = loss.item()
        model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    ).save_pretrained(out)
    summary = {
        "steps": cfg.train_steps,
        "tokens": tokens,
        "final_loss": loss_value,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "data_path": "ingestion.sample.generate_records",
        "data_version": None,
        "config_hash": None,
        "seed": cfg.seed,
        "world_size": 1,
        "engine": "reference",
        "reference_config": asdict(cfg),
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return out
