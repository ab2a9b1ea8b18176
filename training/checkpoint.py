"""Checkpoints: atomic, checksummed, retained, optionally written off the training loop.

Layout: ``OUTPUT/checkpoints/step_00000010/`` holds ``model.safetensors``, the engine's
optimiser / scheduler state, ``rng.pt`` (every rank's torch, CUDA and Python RNG state),
``trainer_state.json`` (step, data position, tokens, loss history) and, written last,
``manifest.json`` (step, world size, engine, config and its hash, tokenizer hash,
parameter shapes, data path and version, sha256 per file). A checkpoint is staged in
``.tmp-step_...``, fsynced and renamed into place, so a directory named ``step_*`` is
complete unless the disk lied; the checksums catch that case and a resume skips to the
previous good checkpoint with a warning naming the bad one.

With ``async_write`` rank 0 copies the state into CPU memory (the only part that stalls
the loop) and a background thread serialises, hashes, fsyncs and renames it. At most one
write is in flight; the next save waits for it. DeepSpeed saves on every rank and is
always synchronous.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training.engines import Engine
from training.errors import IncompatibleCheckpointError, diff_mapping
from training.fsutil import files_under, fsync_dir, fsync_tree, sha256_file

log = logging.getLogger("training.checkpoint")

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
RNG = "rng.pt"
PREFIX = "step_"
STAGING = ".tmp-"
FORMAT = 1


@dataclass
class RunIdentity:
    """What a checkpoint must match to be resumed by this run."""

    config: dict[str, Any]
    config_hash: str
    tokenizer_hash: str
    shapes: dict[str, list[int]]
    engine: str
    data_path: str
    data_version: int


@dataclass
class Checkpointer:
    root: Path
    identity: RunIdentity
    rank: int
    world_size: int
    keep: int = 3
    async_write: bool = False
    blocked_s: list[float] = field(default_factory=list)
    _pending: threading.Thread | None = None
    _error: BaseException | None = None

    def save(self, step: int, engine: Engine, trainer_state: dict[str, Any]) -> None:
        """Write the checkpoint for ``step``; call on every rank."""
        started = time.perf_counter()
        rng = gather_rng(self.rank, self.world_size)
        final = self.root / f"{PREFIX}{step:08d}"
        staging = self.root / f"{STAGING}{final.name}"
        if engine.collective_save:
            if self.rank == 0:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            dist.barrier()
            engine.save_collective(staging, self.rank)
            dist.barrier()
            if self.rank == 0:
                self._finish(staging, final, step, None, None, rng, trainer_state)
            dist.barrier()
        elif self.rank == 0:
            self.wait()
            snapshot = engine.snapshot(copy=self.async_write)
            args = (staging, final, step, engine, snapshot, rng, trainer_state)
            if self.async_write:
                self._pending = threading.Thread(target=self._run, args=args, name="ckpt-writer")
                self._pending.start()
            else:
                self._finish(*args)
        self.blocked_s.append(time.perf_counter() - started)

    def wait(self) -> None:
        """Block until an in-flight asynchronous write is durable; re-raise its failure."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("asynchronous checkpoint write failed") from error

    def _run(self, *args: Any) -> None:
        try:
            self._finish(*args)
        except BaseException as exc:  # surfaced on the training thread by wait()
            self._error = exc

    def _finish(self, staging, final, step, engine, snapshot, rng, trainer_state) -> None:
        if snapshot is not None:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            engine.write_snapshot(snapshot, staging)
        torch.save(rng, staging / RNG)
        (staging / STATE).write_text(json.dumps(trainer_state), encoding="utf-8")
        ident = self.identity
        manifest = {
            "format": FORMAT,
            "step": step,
            "world_size": self.world_size,
            "engine": ident.engine,
            "config_hash": ident.config_hash,
            "config": ident.config,
            "tokenizer_hash": ident.tokenizer_hash,
            "shapes": ident.shapes,
            "data_path": ident.data_path,
            "data_version": ident.data_version,
            "files": {str(p.relative_to(staging)): sha256_file(p) for p in files_under(staging)},
            "created_at": time.time(),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        fsync_tree(staging)
        if final.exists():  # a rewrite after resuming past a corrupt checkpoint
            trash = self.root / f"{STAGING}trash-{final.name}"
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        staging.rename(final)
        fsync_dir(self.root)
        for old in list_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """``step_*`` directories, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def remove_staging(root: Path) -> None:
    """Delete half-written checkpoints left by a killed writer."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(STAGING):
                log.warning("removing partial checkpoint %s left by an interrupted write", p)
                shutil.rmtree(p, ignore_errors=True)


def verify(path: Path) -> dict[str, Any]:
    """Return the manifest if every file it lists is present with its sha256; else raise."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"manifest unreadable ({exc})") from exc
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"manifest format {manifest.get('format')!r} is not {FORMAT}")
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"file {name} is missing")
        if sha256_file(file) != expected:
            raise ValueError(f"file {name} does not match its sha256 (corrupt or truncated)")
    return manifest


def newest_valid(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies; each one skipped is logged as a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            return path, verify(path)
        except ValueError as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
    return None


def check_compatible(path: Path, manifest: dict[str, Any], ident: RunIdentity) -> None:
    """Raise ``IncompatibleCheckpointError`` naming every difference that forbids a resume."""
    problems = []
    if manifest.get("engine") != ident.engine:
        problems.append(f"engine (saved {manifest.get('engine')!r}, now {ident.engine!r})")
    if manifest.get("config_hash") != ident.config_hash:
        diffs = diff_mapping(manifest.get("config"), ident.config)
        problems.append("config differs at " + ", ".join(diffs or ["config_hash"]))
    if manifest.get("tokenizer_hash") != ident.tokenizer_hash:
        problems.append("tokenizer differs (tokenizer.json sha256)")
    saved_shapes = manifest.get("shapes", {})
    if saved_shapes != ident.shapes:
        shape_diffs = diff_mapping(saved_shapes, ident.shapes)
        problems.append("model shape differs at " + ", ".join(shape_diffs[:5]))
    if (
        manifest.get("data_version") != ident.data_version
        or manifest.get("data_path") != ident.data_path
    ):
        problems.append(
            f"data (saved {manifest.get('data_path')!r}@{manifest.get('data_version')}, "
            f"now {ident.data_path!r}@{ident.data_version})"
        )
    if problems:
        raise IncompatibleCheckpointError(f"checkpoint {path}", problems)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    random.setstate(state["python"])


def gather_rng(rank: int, world_size: int) -> list[dict[str, Any]] | None:
    """Every rank's RNG state, on rank 0 (``None`` elsewhere)."""
    mine = rng_state()
    if world_size == 1:
        return [mine]
    out: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(mine, out, dst=0)
    return out


def load_rng(path: Path, rank: int) -> dict[str, Any] | None:
    """This rank's saved RNG state (trusted: our file, checksum-verified), or ``None``."""
    states = torch.load(path / RNG, weights_only=True)
    return states[rank] if rank < len(states) else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE).read_text(encoding="utf-8"))
