"""Command line of the training program, meant to be started by torchrun.

    torchrun --nproc-per-node 2 [--max-restarts 3] -m training --data LAKE/corpus \\
        --output DIR --max-steps 300 --checkpoint-every 50 --seed 0 [--engine ddp|deepspeed] \\
        [--config FILE] [--mlflow URI] [--init-from PARENT_MODEL_DIR]

Launchers (the Dagster asset, operators' scripts) set ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``:
with torchrun sharing its rendezvous TCP store with the workers, the automatic restart
after a crashed worker fails most of the time on CPU (gloo "connectFullMesh failed").
Refusals (bad input, an incompatible checkpoint) print one ``error:`` line on stderr and
exit with a non-zero code; nothing in the output directory is changed.

Each rank's run is one span (``rank N``) continuing the ``TRACEPARENT`` its launcher hands
down (the Dagster asset's span), exported when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; log
lines carry that trace id either way.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from observability.hf import disable_progress_bars, route_transformers_logs
from observability.logs import (
    ContextFilter,
    bind,
    build_formatter,
    configure_logging,
    stream_handler,
)
from observability.tracing import configure_tracing, shutdown, span_from_env
from training.config import ENGINES, load_config
from training.errors import IncompatibleCheckpointError, TrainingInputError
from training.train import Dist, PeerError, RunArgs, Trainer, env_dist


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="corpus Delta table")
    p.add_argument(
        "--output", type=Path, required=True, help="run directory (checkpoints, model, logs)"
    )
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--engine", choices=ENGINES, default=None)
    p.add_argument("--config", type=Path, default=None, help="JSON or YAML training config")
    p.add_argument(
        "--mlflow", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)"
    )
    p.add_argument(
        "--collective-timeout-s",
        type=float,
        default=None,
        help="fail a collective that waits longer than this (default 600; a partition "
        "is noticed within it)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="parent model directory to warm-start from (its tokenizer and weights)",
    )
    return p.parse_args(argv)


def setup_logging(output: Path, d: Dist) -> None:
    """Per-rank log file, plus rank 0's progress on stdout and other ranks' warnings on stderr.

    ``MLOPS_LOG_FORMAT=json`` makes all of them JSON lines carrying the rank, restart, pid and,
    when Dagster launched the run, its run id (``DAGSTER_RUN_ID``). Other libraries' warnings
    go to stderr through the root logger, bare as Python prints them by default, or as JSON.
    """
    fmt = configure_logging("trainer", level=logging.WARNING, text_format="%(message)s")
    if fmt == "json":
        route_transformers_logs()
    bind(rank=d.rank)
    pid = os.getpid()

    def stamp(record: logging.LogRecord) -> bool:
        record.restart, record.pid = d.restart, pid
        return True

    logs = output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("training")
    root.setLevel(logging.INFO)
    root.propagate = False
    file_handler = logging.FileHandler(logs / f"rank{d.rank}.log", mode="a", encoding="utf-8")
    file_handler.setFormatter(
        build_formatter(
            "trainer",
            fmt,
            f"%(asctime)s rank{d.rank} restart{d.restart} pid{pid} %(levelname)s %(name)s: %(message)s",
        )
    )
    file_handler.addFilter(ContextFilter())
    file_handler.addFilter(stamp)
    root.addHandler(file_handler)
    console = stream_handler(
        "trainer",
        fmt,
        sys.stdout if d.rank == 0 else sys.stderr,
        "%(message)s" if d.rank == 0 else f"rank{d.rank}: %(message)s",
    )
    console.addFilter(stamp)
    # Under Dagster Pipes rank 0's progress reaches the run's log through Pipes; printed on
    # stdout as well (which Dagster forwards) every line would show twice.
    progress = d.rank == 0 and not os.environ.get("DAGSTER_PIPES_CONTEXT")
    console.setLevel(logging.INFO if progress else logging.WARNING)
    root.addHandler(console)
    # the trainer reports progress in its log lines; transformers' bar for writing the
    # weights at export would print raw tqdm frames among them (text logs too)
    disable_progress_bars()


def init_process_group(d: Dist, timeout_s: float) -> None:
    backend = "nccl" if d.device.type == "cuda" else "gloo"
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=d.device if d.device.type == "cuda" else None,
        )
    else:  # a single process started without torchrun
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    d = env_dist()
    if d.device.type == "cpu":
        # transformers imports DeepSpeed when saving; tell it there is no GPU to probe for.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        cfg = load_config(
            args.config,
            max_steps=args.max_steps,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
            engine=args.engine,
            collective_timeout_s=args.collective_timeout_s,
            init_from=args.init_from,
        )
    except ValueError as exc:
        if d.rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.output, d)
    configure_tracing("trainer")
    try:
        with span_from_env(f"rank {d.rank}", rank=d.rank, world=d.world_size, restart=d.restart):
            return _run(args, cfg, d)
    finally:
        shutdown()  # the rank's spans leave before torchrun reaps the process


def _run(args: argparse.Namespace, cfg, d: Dist) -> int:
    log = logging.getLogger("training")
    log.info(
        "rank %d/%d pid %d restart %d device %s",
        d.rank,
        d.world_size,
        os.getpid(),
        d.restart,
        d.device,
    )
    if d.device.type == "cpu" and os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(
            max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        )
    init_process_group(d, cfg.collective_timeout_s)
    try:
        Trainer(RunArgs(args.data, args.output, cfg, args.mlflow), d).run()
    except (TrainingInputError, IncompatibleCheckpointError, PeerError) as exc:
        if d.rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        log.error("refused: %s", exc)
        return exc.exit_code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
