"""The training run: prepare once on rank 0, then every rank builds, resumes and trains.

Rank 0 alone decides anything that touches the output directory (pinning the data
version, training the tokenizer, choosing the checkpoint to resume) and broadcasts the
decision, so ranks never disagree about what they resume from. All checks that can
refuse a run (bad corpus, too many ranks for the data, an incompatible checkpoint) happen
before the first byte is written, so a refused run leaves the directory as it was.

Bitwise-identical resume on CPU rests on: model init from the seed, the data position
and every rank's RNG state in the checkpoint, and a DataLoader with its own generator.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training import checkpoint as ck
from training import elastic
from training.config import TrainConfig
from training.data import latest_version, pack, read_train_split
from training.engines import build_engine
from training.errors import IncompatibleCheckpointError, TrainingInputError, diff_mapping
from training.fsutil import fsync_tree, write_json_atomic
from training.model import build_model, export_model, parameter_shapes
from training.sampling import GlobalOffsetSampler, batch_of, check_enough
from training.throughput import Meter
from training.tokenizer import (
    encode_records,
    load_tokenizer,
    save_tokenizer,
    tokenizer_hash,
    train_tokenizer,
)
from training.tracking import build_tracker
from training.warm_start import check_parent, load_parent_weights, parent_shapes

log = logging.getLogger("training")


class PeerError(Exception):
    """A refusal decided on rank 0, re-raised on every rank with the same message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class RunArgs:
    data: Path
    output: Path
    config: TrainConfig
    mlflow: str | None = None


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    restart: int
    device: torch.device


def decide(d: Dist, fn) -> Any:
    """Run ``fn`` on rank 0 and give every rank its result, or its refusal."""
    payload: list[Any] = [None]
    if d.rank == 0:
        try:
            payload = [("ok", fn())]
        except (TrainingInputError, IncompatibleCheckpointError) as exc:
            payload = [("error", str(exc), exc.exit_code)]
    if d.world_size > 1:
        elastic.wait_for_rank0(d.rank, d.world_size, "prepare")
        dist.broadcast_object_list(payload, src=0)
    if payload[0][0] == "error":
        raise PeerError(payload[0][1], payload[0][2])
    return payload[0][1]


class Trainer:
    def __init__(self, args: RunArgs, d: Dist) -> None:
        self.args, self.d, self.cfg = args, d, args.config
        self.out = args.output
        self.tok_dir = self.out / "tokenizer"
        self.ckpt_dir = self.out / "checkpoints"
        self.started = time.time()
        self.wall_before = 0.0  # training wall time of earlier attempts, from the checkpoint

    def _identity(self, tokenizer, version: int) -> ck.RunIdentity:
        vocab = len(tokenizer)
        with torch.device("meta"):
            shapes = parameter_shapes(build_model(self.cfg.model, vocab, self.cfg.seed))
        return ck.RunIdentity(
            config=self.cfg.results_affecting(),
            config_hash=self.cfg.config_hash(),
            tokenizer_hash=tokenizer_hash(tokenizer),
            shapes=shapes,
            engine=self.cfg.engine,
            data_path=str(self.args.data),
            data_version=version,
        )

    def prepare(self) -> dict[str, Any]:
        """Rank 0: validate everything, then (only then) pin the run in the output directory."""
        cfg, run_file = self.cfg, self.out / "run.json"
        pinned = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
        if pinned is not None:
            problems = diff_mapping(pinned["config"], cfg.results_affecting())
            if pinned["data_path"] != str(self.args.data):
                problems.append(
                    f"--data (saved {pinned['data_path']!r}, now {str(self.args.data)!r})"
                )
            if pinned["engine"] != cfg.engine:
                problems.append(f"engine (saved {pinned['engine']!r}, now {cfg.engine!r})")
            if problems:
                raise IncompatibleCheckpointError(f"output directory {self.out}", problems)
        version = pinned["data_version"] if pinned else latest_version(self.args.data)
        split = read_train_split(self.args.data, version, cfg.data.text_column)
        have_tokenizer = (self.tok_dir / "tokenizer.json").is_file()
        parent = Path(cfg.init_from) if cfg.init_from else None
        if parent is not None:
            parent_shapes(parent)  # refuses a directory that is not a model
        if have_tokenizer:
            tokenizer = load_tokenizer(self.tok_dir)
        elif parent is not None:  # the parent's token ids, or its weights mean nothing
            tokenizer = load_tokenizer(parent)
        else:
            tokenizer = train_tokenizer(
                split.texts, cfg.model.vocab_size, cfg.seed, cfg.data.tokenizer_sample
            )
        blocks = pack(encode_records(tokenizer, split.texts), cfg.data.seq_len)
        check_enough(blocks.shape[0], self.d.world_size, cfg.data.batch_size)
        identity = self._identity(tokenizer, version)
        if parent is not None:
            check_parent(parent, identity.shapes)
        found = ck.newest_valid(self.ckpt_dir)
        if found is not None:
            ck.check_compatible(found[0], found[1], identity)
        # Everything checked: from here on the output directory may change.
        ck.remove_staging(self.ckpt_dir)
        if not have_tokenizer:
            tmp = self.tok_dir.with_name("tokenizer.tmp")
            save_tokenizer(tokenizer, tmp)
            fsync_tree(tmp)
            tmp.rename(self.tok_dir)
        if pinned is None:
            write_json_atomic(
                run_file,
                {
                    "data_path": str(self.args.data),
                    "data_version": version,
                    "config": cfg.results_affecting(),
                    "config_hash": cfg.config_hash(),
                    "engine": cfg.engine,
                    "seed": cfg.seed,
                    "world_size": self.d.world_size,
                    "started_at": self.started,
                },
            )
        attempt = elastic.next_attempt(self.out)
        elastic.record_attempt(
            self.out,
            {
                "attempt": attempt,
                "world_size": self.d.world_size,
                "hosts": elastic.hosts_in_group(),
                "num_blocks": int(blocks.shape[0]),
                "restart": self.d.restart,
                "resumed_from_step": found[1]["step"] if found else 0,
                "checkpoint_world_size": found[1]["world_size"] if found else None,
                "started_at": round(time.time(), 3),
            },
        )
        log.info(
            "data %s pinned at version %d: %d records, %d in the train split, %d blocks",
            self.args.data,
            version,
            split.total_records,
            len(split.texts),
            blocks.shape[0],
        )
        return {
            "version": version,
            "resume": str(found[0]) if found else None,
            "saved_world": found[1]["world_size"] if found else None,
            "attempt": attempt,
        }

    def run(self) -> dict[str, Any]:
        d, cfg = self.d, self.cfg
        plan = decide(d, self.prepare)
        tokenizer = load_tokenizer(self.tok_dir)
        split = read_train_split(self.args.data, plan["version"], cfg.data.text_column)
        blocks = pack(encode_records(tokenizer, split.texts), cfg.data.seq_len)
        model = build_model(cfg.model, len(tokenizer), cfg.seed)
        if cfg.init_from and not plan["resume"]:  # a resume loads its own checkpoint instead
            load_parent_weights(model, Path(cfg.init_from))
            log.info("warm start from %s", cfg.init_from)
        engine = build_engine(model, cfg, d.device, d.world_size)
        identity = self._identity(tokenizer, plan["version"])
        saver = ck.Checkpointer(
            self.ckpt_dir,
            identity,
            d.rank,
            d.world_size,
            keep=cfg.checkpoint.keep,
            async_write=cfg.checkpoint.async_write,
        )
        sampler = GlobalOffsetSampler(
            blocks.shape[0], cfg.data.batch_size, d.rank, d.world_size, cfg.seed
        )
        state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "consumed": 0,  # blocks of the epoch's order already trained on, by any world size
            "tokens": 0,
            "wall_time_s": 0.0,
            "loss_history": [],
        }
        # Distinct dropout streams per rank; replaced by the saved streams on resume.
        torch.manual_seed(cfg.seed * 7919 + d.rank + 1)
        random.seed(cfg.seed * 7919 + d.rank + 1)
        if plan["resume"]:
            state = self._resume(Path(plan["resume"]), plan["saved_world"], engine, state)
        sampler.set_position(state["epoch"], state["consumed"])
        samples = elastic.SampleLog(self.out, plan["attempt"], d.rank, d.world_size)
        tracker = build_tracker(d.rank, self.args.mlflow, self.out)
        tracker.start(
            {
                **_flat(cfg.to_dict()),
                "output": str(self.out),
                "restart_count": d.restart,
                "data_version": plan["version"],
                "world_size": d.world_size,
            }
        )
        # Opening MLflow (its database migrations) can outlast a collective's timeout.
        elastic.wait_for_rank0(d.rank, d.world_size, "tracking")
        tokens_per_step = d.world_size * cfg.data.batch_size * cfg.data.seq_len
        meter = Meter(model, d.device, cfg.data.seq_len, tokens_per_step)
        start_step, loss = state["step"], torch.tensor(float("nan"))
        meter.start()
        for part in sampler:
            if state["step"] >= cfg.max_steps:
                break
            loss = engine.step(batch_of(blocks, part), part.scale)
            value = loss.item()
            meter.tick()
            state.update(
                step=state["step"] + 1,
                epoch=part.epoch,
                consumed=part.end,
                tokens=state["tokens"] + part.size * cfg.data.seq_len,
            )
            step = state["step"]
            samples.record(step, part)
            state["loss_history"].append([step, round(value, 6)])
            if step == start_step + 1:
                log.info(
                    "first step of restart %d done: step %d at %.3f", d.restart, step, time.time()
                )
            if d.rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps):
                line = meter.progress(step, cfg.max_steps, value, engine.lr())
                log.info(line)
                tracker.message(line)
                tracker.metrics({"loss": value, "lr": engine.lr(), **meter.rates()}, step)
            if step % cfg.checkpoint.every == 0 or step == cfg.max_steps:
                state["wall_time_s"] = self._wall(state)
                saver.save(step, engine, state)
        saver.wait()
        samples.close()
        return self._finish(engine, tokenizer, state, loss, plan, meter, saver, tracker, start_step)

    def _wall(self, state: dict[str, Any]) -> float:
        return self.wall_before + time.time() - self.started

    def _resume(
        self, path: Path, saved_world: int, engine, state: dict[str, Any]
    ) -> dict[str, Any]:
        d, bs = self.d, self.cfg.data.batch_size
        engine.load(path)
        saved = ck.load_trainer_state(path)
        self.wall_before = saved["wall_time_s"]
        if "consumed" not in saved:  # written before positions were global offsets
            saved["consumed"] = saved.pop("batch") * saved_world * bs
        if saved_world != d.world_size:
            log.warning(
                "world size changed from %d to %d since %s: the remaining data of epoch %d "
                "(from block %d of its order) is split over %d ranks, per-rank RNG streams "
                "reseeded; the result will not be bitwise equal to an uninterrupted run",
                saved_world,
                d.world_size,
                path,
                saved["epoch"],
                saved["consumed"],
                d.world_size,
            )
        else:
            rng = ck.load_rng(path, d.rank)
            assert rng is not None, "same world size implies a saved RNG state per rank"
            ck.set_rng_state(rng)
        log.info("resumed from %s (step %d)", path, saved["step"])
        return saved

    def _finish(
        self, engine, tokenizer, state, loss, plan, meter, saver, tracker, start_step
    ) -> dict[str, Any]:
        d, cfg = self.d, self.cfg
        final = loss.detach().float().reshape(1).clone()
        if d.world_size > 1:
            dist.all_reduce(final)
            final /= d.world_size
        if state["step"] == start_step and state["loss_history"]:
            # Restarted after the last checkpoint: no step ran in this process.
            final = torch.tensor([state["loss_history"][-1][1]])
        summary = {
            "steps": state["step"],
            "tokens": state["tokens"],
            "final_loss": float(final.item()),
            "wall_time_s": round(self._wall(state), 3),
            "data_path": str(self.args.data),
            "data_version": plan["version"],
            "config_hash": cfg.config_hash(),
            "seed": cfg.seed,
            "init_from": cfg.init_from,
            "world_size": d.world_size,
            "engine": cfg.engine,
            "restarts": d.restart,
            "resumed_from_step": start_step,
            **elastic.membership(elastic.read_attempts(self.out)),
            "model_path": str(self.out / "model"),
            **meter.summary(),
            "checkpoint_blocked_s": [round(s, 6) for s in saver.blocked_s],
            "config": cfg.to_dict(),
            "loss_history": state["loss_history"],
        }
        if d.rank == 0:
            export_model(engine.model, tokenizer, summary, self.out / "model")
            log.info(
                "model written to %s (final loss %.4f)", self.out / "model", summary["final_loss"]
            )
            tracker.finish(summary)
        elastic.wait_for_rank0(d.rank, d.world_size, "export")
        return summary


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def env_dist() -> Dist:
    """Rank layout from torchrun's environment; one process when started without torchrun."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Dist(rank, world, local, restart, device)
