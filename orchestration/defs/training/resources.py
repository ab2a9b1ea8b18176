"""The resource that launches the training program: torchrun under a Dagster Pipes session.

It builds the torchrun command line (the program's contract, see ``training.cli``) and a
``PipesSubprocessClient`` whose environment carries what every launch needs:
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` so torchrun's automatic restart after a crashed
worker works (without it, restarts on CPU mostly fail in gloo's connectFullMesh), offline
Hugging Face, and the MLflow URI when one is configured. The whole launch is bounded by
``timeout_s`` (coreutils ``timeout``: SIGTERM, then SIGKILL a minute later).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import dagster as dg

LAUNCH_ENV = {
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class TrainingLauncher(dg.ConfigurableResource):
    """Starts ``torchrun -m training`` as a Pipes subprocess."""

    torchrun: str | None = None
    """Path of the torchrun executable; empty means the one next to this Python."""
    timeout_s: int = 6 * 3600
    """Wall-clock limit of one launch (all restarts included)."""
    mlflow_tracking_uri: str | None = None
    """Where rank 0 logs metrics; empty: the registry's tracking URI, as the asset resolves it."""
    omp_num_threads: int | None = None
    """Threads per worker; empty lets torchrun choose (1 per worker when several share a host)."""

    def executable(self) -> str:
        return self.torchrun or str(Path(sys.executable).with_name("torchrun"))

    def command(
        self,
        *,
        data: Path,
        output: Path,
        nproc: int,
        max_steps: int,
        checkpoint_every: int,
        seed: int,
        engine: str,
        max_restarts: int,
        config_file: str | None = None,
        mlflow_uri: str | None = None,
        init_from: str | None = None,
    ) -> list[str]:
        cmd = [
            self.executable(),
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "--max-restarts",
            str(max_restarts),
            "-m",
            "training",
            "--data",
            str(data),
            "--output",
            str(output),
            "--max-steps",
            str(max_steps),
            "--checkpoint-every",
            str(checkpoint_every),
            "--seed",
            str(seed),
            "--engine",
            engine,
        ]
        if config_file:
            cmd += ["--config", config_file]
        if init_from:
            cmd += ["--init-from", init_from]
        if self.mlflow_tracking_uri or mlflow_uri:
            cmd += ["--mlflow", self.mlflow_tracking_uri or mlflow_uri]
        timeout = shutil.which("timeout")
        if timeout:
            cmd = [timeout, "--signal=TERM", "--kill-after=60", str(self.timeout_s), *cmd]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(LAUNCH_ENV)
        if self.omp_num_threads:
            env["OMP_NUM_THREADS"] = str(self.omp_num_threads)
        return env

    def client(self) -> dg.PipesSubprocessClient:
        return dg.PipesSubprocessClient(env=self.env(), forward_stdio=True)
