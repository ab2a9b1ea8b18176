"""Model metrics on a held-out sample: token perplexity and task exact-match accuracy.

Perplexity is exp(mean negative log-likelihood) over every predicted token of the held-out
texts, tokenised as the model's own tokenizer does (so it compares models that share a
tokenizer, which is the case along one training pipeline). Exact match greedily continues
each task prompt, reads the continuation up to end of line or end-of-sequence, strips it
and compares it with the expected answer.

Both run in batches of sequences of *equal token length*: no padding means no position or
mask subtleties, so a batched result is bit-for-bit the one-by-one result and the metric
does not depend on how the sample happens to be grouped. Weights load from safetensors
only; a directory without ``model.safetensors`` is refused rather than unpickled.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from evaluation.heldout import HeldoutSample


class ModelLoadError(ValueError):
    """A model directory does not hold a loadable model artifact."""


@dataclass(frozen=True)
class MetricsConfig:
    max_new_tokens: int = 16
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ModelMetrics:
    perplexity: float
    exact_match: float
    tasks: int
    tokens: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {
            "perplexity": self.perplexity,
            "exact_match": self.exact_match,
            "tasks": self.tasks,
            "tokens": self.tokens,
            "seconds": self.seconds,
        }


def load_model(model_dir: str | Path) -> tuple[PreTrainedModel, object]:
    """Load model and tokenizer from an artifact directory, offline and safetensors-only."""
    path = Path(model_dir)
    if not (path / "model.safetensors").is_file() and not any(path.glob("model-*.safetensors")):
        raise ModelLoadError(
            f"model_dir={str(path)!r} has no model.safetensors; expected a model artifact "
            "directory written by training (config.json, model.safetensors, tokenizer.json)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model_dir={str(path)!r}: {exc}") from exc
    model.eval()
    return model, tokenizer


def _encode(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer(text)["input_ids"])
    # A tokenizer that appends EOS would tell the model the prompt is over; drop it.
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    return ids


def _same_length_batches(seqs: Sequence[list[int]], size: int) -> Iterator[list[int]]:
    """Yield lists of indices into ``seqs``, each list of one token length, in a fixed order."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, seq in enumerate(seqs):
        by_length[len(seq)].append(index)
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), size):
            yield group[start : start + size]


@torch.inference_mode()
def _perplexity(model, tokenizer, texts: Sequence[str], cfg: MetricsConfig) -> tuple[float, int]:
    seqs = [s for s in (_encode(tokenizer, t) for t in texts) if len(s) >= 2]
    if not seqs:
        raise ValueError("perplexity needs at least one held-out text of two or more tokens")
    total_nll, total_tokens = 0.0, 0
    for batch in _same_length_batches(seqs, cfg.batch_size):
        ids = torch.tensor([seqs[i] for i in batch])
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += ids[:, 1:].numel()
    return math.exp(min(total_nll / total_tokens, 700.0)), total_tokens


def _answer_of(tokenizer, new_ids: list[int]) -> str:
    eos = tokenizer.eos_token_id
    if eos is not None and eos in new_ids:
        new_ids = new_ids[: new_ids.index(eos)]
    return tokenizer.decode(new_ids, skip_special_tokens=True).split("\n", 1)[0].strip()


@torch.inference_mode()
def _exact_match(model, tokenizer, sample: HeldoutSample, cfg: MetricsConfig) -> float:
    if not sample.tasks:
        raise ValueError(
            f"no parseable held-out tasks in {sample.data_path!r}; exact match undefined"
        )
    prompts = [_encode(tokenizer, task.prompt) for task in sample.tasks]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    correct = 0
    for batch in _same_length_batches(prompts, cfg.batch_size):
        ids = torch.tensor([prompts[i] for i in batch])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, index in enumerate(batch):
            answer = _answer_of(tokenizer, out[row, ids.shape[1] :].tolist())
            correct += answer == sample.tasks[index].answer
    return correct / len(sample.tasks)


def evaluate_model(
    model_dir: str | Path, sample: HeldoutSample, cfg: MetricsConfig
) -> ModelMetrics:
    """Perplexity and exact match of the model in ``model_dir`` on ``sample``."""
    started = time.perf_counter()
    model, tokenizer = load_model(model_dir)
    perplexity, tokens = _perplexity(model, tokenizer, sample.texts, cfg)
    exact = _exact_match(model, tokenizer, sample, cfg)
    return ModelMetrics(
        perplexity=perplexity,
        exact_match=exact,
        tasks=len(sample.tasks),
        tokens=tokens,
        seconds=round(time.perf_counter() - started, 3),
    )
