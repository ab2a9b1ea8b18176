"""Step timing, tokens per second and model FLOPs utilisation (MFU, GPU only).

A step's time is the wall time between the ends of consecutive steps, so data loading,
logging and checkpoint stalls count against throughput as they do in reality.
Steady-state throughput leaves out the first ``WARMUP_STEPS`` steps of a process (lazy
allocation, first collective, autotuning), so figures from short runs stay comparable.
MFU uses the usual estimate of 6 x parameters + 12 x layers x hidden x sequence FLOPs per
token against the device's dense bf16 peak; on CPU, or on a GPU not in the table, MFU is
not reported rather than guessed.
"""

from __future__ import annotations

import time

import torch

WARMUP_STEPS = 3

#: Dense bf16 peak FLOP/s by device-name fragment (vendor data sheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class Meter:
    def __init__(
        self, model: torch.nn.Module, device: torch.device, seq_len: int, tokens_per_step: int
    ) -> None:
        cfg = model.config
        params = sum(p.numel() for p in model.parameters())
        self.flops_per_token = 6 * params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
        self.peak = peak_flops(device)
        self.cuda = device.type == "cuda"
        self.tokens_per_step = tokens_per_step
        self.steps = 0
        self.steady_steps = 0
        self.steady_time = 0.0
        self.window_steps = 0
        self.window_time = 0.0
        self._t0 = 0.0
        self.last_step_s = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def tick(self) -> None:
        """Mark the end of a step."""
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.last_step_s, self._t0 = now - self._t0, now
        self.steps += 1
        self.window_steps += 1
        self.window_time += self.last_step_s
        if self.steps > WARMUP_STEPS:
            self.steady_steps += 1
            self.steady_time += self.last_step_s

    def rates(self) -> dict[str, float]:
        """Rates over the steps since the last call (the progress window)."""
        tps = self.tokens_per_step * self.window_steps / max(self.window_time, 1e-9)
        out = {"tokens_per_s": tps, "step_time_s": self.window_time / max(self.window_steps, 1)}
        if self.peak:
            out["mfu"] = tps * self.flops_per_token / self.peak
        self.window_steps, self.window_time = 0, 0.0
        return out

    def progress(self, step: int, max_steps: int, loss: float, lr: float) -> str:
        tps = self.tokens_per_step * self.window_steps / max(self.window_time, 1e-9)
        step_ms = 1000 * self.window_time / max(self.window_steps, 1)
        line = f"step {step}/{max_steps} loss {loss:.4f} lr {lr:.2e} tok/s {tps:,.0f} step_ms {step_ms:.1f}"
        if self.peak:
            line += f" mfu {100 * tps * self.flops_per_token / self.peak:.1f}%"
        return line

    def summary(self) -> dict[str, float | None]:
        """Steady-state figures of this process (all steps after the warm-up)."""
        if self.steady_steps == 0:
            return {"tokens_per_s": None, "step_time_s": None, "mfu": None}
        tps = self.tokens_per_step * self.steady_steps / self.steady_time
        return {
            "tokens_per_s": round(tps, 1),
            "step_time_s": round(self.steady_time / self.steady_steps, 6),
            "mfu": round(tps * self.flops_per_token / self.peak, 4) if self.peak else None,
        }
