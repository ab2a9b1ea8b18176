"""Training engines behind one narrow interface: plain DDP and DeepSpeed ZeRO.

An engine owns the wrapped model, the optimiser and the LR schedule, runs one optimiser
step per batch, and saves / restores its own state into a checkpoint directory that the
``Checkpointer`` owns. DDP state is small enough to snapshot on rank 0 (the replicas are
identical), which is what makes asynchronous writes possible; DeepSpeed partitions the
optimiser state across ranks, so every rank takes part in its save and load.

Trust: ``optimizer.pt`` and DeepSpeed's shard files are pickles, but only ever read from
our own checkpoint directory after their sha256 matched the manifest written with them;
``optimizer.pt`` is additionally loaded with ``weights_only=True``. Model weights are
safetensors.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from training.config import TrainConfig

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
DEEPSPEED_DIR = "deepspeed"


class Engine(Protocol):
    name: str
    model: torch.nn.Module  # the unwrapped model
    #: True when every rank must take part in save/load (state is partitioned).
    collective_save: bool

    def step(self, batch: torch.Tensor, scale: float = 1.0) -> torch.Tensor: ...
    def lr(self) -> float: ...
    def snapshot(self, copy: bool) -> dict[str, Any]: ...
    def write_snapshot(self, snapshot: dict[str, Any], directory: Path) -> None: ...
    def save_collective(self, directory: Path, rank: int) -> None: ...
    def load(self, directory: Path) -> None: ...


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    warmup, total, floor = cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; norms and biases are left alone, as is usual for transformers."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _autocast(device: torch.device, cfg: TrainConfig):
    if device.type == "cuda" and cfg.model.dtype == "bfloat16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _cpu_clone(state: Any) -> Any:
    """Deep copy of a (nested) state dict with every tensor copied to CPU memory."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _cpu_clone(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_cpu_clone(v) for v in state)
    return state


class DDPEngine:
    name = "ddp"
    collective_save = False

    def __init__(
        self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device, world_size: int
    ) -> None:
        self.cfg, self.device = cfg, device
        self.model = model.to(device)
        if world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.wrapped: torch.nn.Module = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.wrapped = self.model
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay),
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            fused=device.type == "cuda",
        )
        self.scheduler = LambdaLR(self.optimizer, lr_lambda(cfg))

    def step(self, batch: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """One optimiser step; ``scale`` weights this rank's loss when slices are unequal."""
        x = batch.to(self.device, non_blocking=True)
        with _autocast(self.device, self.cfg):
            loss = self.wrapped(input_ids=x, labels=x).loss
        (loss if scale == 1.0 else loss * scale).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def snapshot(self, copy: bool) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optim": {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            },
        }
        return _cpu_clone(state) if copy or self.device.type != "cpu" else state

    def write_snapshot(self, snapshot: dict[str, Any], directory: Path) -> None:
        save_file(
            {k: v.contiguous() for k, v in snapshot["model"].items()}, str(directory / MODEL_FILE)
        )
        torch.save(snapshot["optim"], directory / OPTIMIZER_FILE)

    def save_collective(self, directory: Path, rank: int) -> None:
        raise AssertionError("DDP state is written by rank 0 from a snapshot")

    def load(self, directory: Path) -> None:
        weights = load_file(str(directory / MODEL_FILE), device=str(self.device))
        self.model.load_state_dict(weights)
        optim = torch.load(directory / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(optim["optimizer"])
        self.scheduler.load_state_dict(optim["scheduler"])


def deepspeed_config(cfg: TrainConfig, world_size: int, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed JSON with batch, clipping and optimiser taken from our config."""
    if cfg.deepspeed_config:
        path = Path(cfg.deepspeed_config)
        if not path.is_file():
            raise ValueError(f"config field deepspeed_config={str(path)!r} is not a file")
        ds = json.loads(path.read_text(encoding="utf-8"))
    else:
        ds = json.loads(resources.files("training").joinpath("deepspeed_zero1.json").read_text())
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2):
        raise ValueError(f"deepspeed zero_optimization.stage={stage!r} must be 1 or 2")
    o = cfg.optim
    ds.update(
        train_micro_batch_size_per_gpu=cfg.data.batch_size,
        gradient_accumulation_steps=1,
        train_batch_size=cfg.data.batch_size * world_size,
        gradient_clipping=o.grad_clip,
        steps_per_print=10**9,
    )
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {
            "lr": o.lr,
            "betas": [o.beta1, o.beta2],
            "weight_decay": o.weight_decay,
            "torch_adam": True,
        },
    }
    ds["bf16"] = {"enabled": device.type == "cuda" and cfg.model.dtype == "bfloat16"}
    return ds


class DeepSpeedEngine:
    name = "deepspeed"
    collective_save = True

    def __init__(
        self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device, world_size: int
    ) -> None:
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # skips DeepSpeed's GPU probing
        import deepspeed  # imported lazily: it is slow to import and only this engine needs it

        self.cfg, self.device = cfg, device
        self.model = model.to(device)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            model_parameters=param_groups(self.model, cfg.optim.weight_decay),
            config=deepspeed_config(cfg, world_size, device),
            lr_scheduler=lambda optimizer: LambdaLR(optimizer, lr_lambda(cfg)),
        )

    def step(self, batch: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True)
        loss = self.engine(input_ids=x, labels=x).loss
        self.engine.backward(loss if scale == 1.0 else loss * scale)
        self.engine.step()
        return loss.detach()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def snapshot(self, copy: bool) -> dict[str, Any]:
        raise AssertionError("DeepSpeed state is saved collectively")

    def write_snapshot(self, snapshot: dict[str, Any], directory: Path) -> None:
        raise AssertionError("DeepSpeed state is saved collectively")

    def save_collective(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag="state", save_latest=False)
        if rank == 0:
            weights = {
                k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()
            }
            save_file(weights, str(directory / MODEL_FILE))

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(
            str(directory / DEEPSPEED_DIR),
            tag="state",
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )


def build_engine(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device, world_size: int
) -> Engine:
    cls = DeepSpeedEngine if cfg.engine == "deepspeed" else DDPEngine
    return cls(model, cfg, device, world_size)
