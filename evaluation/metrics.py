"""Model metrics: held-out perplexity (any corpus) and task-suite accuracy (when suites exist).

Perplexity is exp(mean negative log-likelihood) over every predicted token of the held-out
texts, tokenised as the model's own tokenizer does (so it compares models that share a
tokenizer, which is the case along one training pipeline, warm starts included). Task
accuracy greedily continues each suite prompt, reads the continuation up to end of line or
end-of-sequence, strips it and matches it against the expected answer by the row's rule
(``evaluation.suites``). Per-example scores (each text's summed NLL and token count, each
task's correctness) are kept, because the gate compares two models example by example.

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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from evaluation.heldout import HeldoutSample
from evaluation.suites import SuiteExample


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
    exact_match: float | None  # accuracy on the task suites; None when there are none
    tasks: int
    tokens: int
    seconds: float
    vocab_size: int = 0
    text_nll: tuple[float, ...] = ()  # per held-out text: summed NLL of its predicted tokens
    text_tokens: tuple[int, ...] = ()  # per held-out text: predicted tokens
    task_correct: tuple[int, ...] = ()  # per suite example: 1 when answered correctly
    suite_accuracy: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("text_nll", "text_tokens", "task_correct"):  # lists, after a JSON trip
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def as_dict(self) -> dict[str, float]:
        """Scalar figures (MLflow metrics and tags); per-example scores stay in the report."""
        out = {
            "perplexity": self.perplexity,
            "tasks": self.tasks,
            "tokens": self.tokens,
            "seconds": self.seconds,
        }
        if self.exact_match is not None:
            out["exact_match"] = self.exact_match
        out.update({f"exact_match.{name}": acc for name, acc in self.suite_accuracy.items()})
        return out


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
def text_nll(
    model, tokenizer, texts: Sequence[str], cfg: MetricsConfig
) -> tuple[list[float], list[int]]:
    """Per text, in the order given: summed NLL of its predicted tokens and their count.

    A text of fewer than 2 tokens scores (0.0, 0), so the lists stay aligned with ``texts``
    whatever the tokenizer; the part of a text beyond the model's context is not scored."""
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    seqs = [s[:limit] for s in (_encode(tokenizer, t) for t in texts)]
    scored = [i for i, s in enumerate(seqs) if len(s) >= 2]
    if not scored:
        raise ValueError("perplexity needs at least one held-out text of two or more tokens")
    nll, counts = [0.0] * len(seqs), [max(0, len(s) - 1) for s in seqs]
    for group in _same_length_batches([seqs[i] for i in scored], cfg.batch_size):
        batch = [scored[j] for j in group]
        ids = torch.tensor([seqs[i] for i in batch])
        logits = model(input_ids=ids).logits[:, :-1].float()
        per_token = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, 1:], reduction="none"
        )
        for row, index in enumerate(batch):
            nll[index] = per_token[row].sum().item()
    return nll, counts


def _answer_of(tokenizer, new_ids: list[int]) -> str:
    eos = tokenizer.eos_token_id
    if eos is not None and eos in new_ids:
        new_ids = new_ids[: new_ids.index(eos)]
    return tokenizer.decode(new_ids, skip_special_tokens=True).split("\n", 1)[0].strip()


@torch.inference_mode()
def answers(model, tokenizer, prompts_text: Sequence[str], cfg: MetricsConfig) -> list[str]:
    """The greedy answer to each prompt (up to end of line or end-of-sequence, stripped)."""
    prompts = [_encode(tokenizer, prompt) for prompt in prompts_text]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out_answers = [""] * len(prompts)
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
            out_answers[index] = _answer_of(tokenizer, out[row, ids.shape[1] :].tolist())
    return out_answers


def evaluate_model(
    model_dir: str | Path,
    sample: HeldoutSample,
    cfg: MetricsConfig,
    tasks: Sequence[SuiteExample] = (),
) -> ModelMetrics:
    """Perplexity on ``sample``'s texts and accuracy on ``tasks`` of the model in ``model_dir``."""
    started = time.perf_counter()
    model, tokenizer = load_model(model_dir)
    nll, counts = text_nll(model, tokenizer, sample.texts, cfg)
    correct: list[int] = []
    by_suite: dict[str, list[int]] = defaultdict(list)
    if tasks:
        got = answers(model, tokenizer, [t.prompt for t in tasks], cfg)
        correct = [int(task.is_correct(answer)) for task, answer in zip(tasks, got, strict=True)]
        for task, ok in zip(tasks, correct, strict=True):
            by_suite[task.suite].append(ok)
    tokens = sum(counts)
    return ModelMetrics(
        perplexity=math.exp(min(sum(nll) / tokens, 700.0)),
        exact_match=sum(correct) / len(correct) if correct else None,
        tasks=len(correct),
        tokens=tokens,
        seconds=round(time.perf_counter() - started, 3),
        vocab_size=len(tokenizer),
        text_nll=tuple(nll),
        text_tokens=tuple(counts),
        task_correct=tuple(correct),
        suite_accuracy={name: sum(v) / len(v) for name, v in sorted(by_suite.items())},
    )
