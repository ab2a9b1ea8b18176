"""The baseline for ``train_throughput.py``: a bare PyTorch DDP loop, started by torchrun.

Same model, same packed data blocks (read through the finished run's tokenizer), same
micro-batch and optimiser as the trainer, but none of its machinery: no checkpoints, no
RNG bookkeeping, no trackers, a plain ``DistributedSampler``. Step time is measured the
same way (wall time between step ends, first 3 steps left out). Rank 0 writes
``{"tokens_per_s": ...}`` to ``--result``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from training.config import load_config
from training.data import Blocks, pack, read_train_split
from training.model import build_model
from training.tokenizer import encode_records, load_tokenizer

WARMUP = 3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True, help="a finished trainer output dir")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--result", type=Path, required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(args.config)
    run = json.loads((args.run_dir / "run.json").read_text())
    tokenizer = load_tokenizer(args.run_dir / "tokenizer")
    split = read_train_split(args.data, run["data_version"], cfg.data.text_column)
    blocks = pack(encode_records(tokenizer, split.texts), cfg.data.seq_len)
    model = build_model(cfg.model, len(tokenizer), seed=0)
    wrapped = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    sampler = DistributedSampler(
        Blocks(blocks), num_replicas=world, rank=rank, seed=0, drop_last=True
    )
    loader = DataLoader(
        Blocks(blocks), batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True
    )
    step, timed, t_last, t_start = 0, 0, time.perf_counter(), 0.0
    epoch = 0
    while step < args.steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            loss = wrapped(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            step += 1
            now = time.perf_counter()
            if step == WARMUP:
                t_start = now
            elif step > WARMUP:
                timed += 1
            t_last = now
            if step >= args.steps:
                break
        epoch += 1
    tokens = timed * world * cfg.data.batch_size * cfg.data.seq_len
    if rank == 0:
        args.result.write_text(json.dumps({"tokens_per_s": tokens / (t_last - t_start)}))
    dist.barrier()  # leave together: a gloo peer that exits first can strand the other
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
