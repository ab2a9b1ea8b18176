"""The resource that launches the training program: torchrun under a Dagster Pipes session.

It builds the torchrun command line (the program's contract, see `training.cli`) and a
`PipesSubprocessClient` whose environment carries what every launch needs:
`TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` so torchrun's automatic restart after a crashed
worker works (without it, restarts on CPU mostly fail in gloo's connectFullMesh), offline
Hugging Face, and the MLflow URI when one is configured. The whole launch is bounded by
`timeout_s` (coreutils `timeout`: SIGTERM, then SIGKILL a minute later).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Literal

import dagster as dg

from training.launch import ElasticLaunch
from training.multinode import HostSpec, JobSpec, TrainSpec

LAUNCH_ENV = {
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class TrainingHost(dg.Config):
    """One host of a multi-host job."""

    address: str
    """Address the other hosts reach it at (the first host also holds the c10d rendezvous)."""
    exec_prefix: list[str] = []
    """How to run a command there, e.g. `["ssh", "node1"]`; empty: this machine."""
    ifname: str | None = None
    """Network interface gloo binds to (`GLOO_SOCKET_IFNAME`); empty lets gloo choose."""


class TrainingLauncher(dg.ConfigurableResource):
    """Starts `torchrun -m training` as a Pipes subprocess: on this host, or on `hosts`."""

    torchrun: str | None = None
    """Path of the torchrun executable; empty means the one next to this Python."""
    timeout_s: int = 6 * 3600
    """Wall-clock limit of one launch (all restarts included)."""
    mlflow_tracking_uri: str | None = None
    """Where rank 0 logs metrics; empty: the registry's tracking URI, as the asset resolves it."""
    omp_num_threads: int | None = None
    """Threads per worker; empty lets torchrun choose (1 per worker when several share a host)."""
    hosts: list[TrainingHost] = []
    """Hosts of a multi-host job, one torchrun agent each; empty: one host, `--standalone`."""
    min_hosts: int | None = None
    """Fewest hosts the job trains with (elastic below `len(hosts)`); empty: all of them."""
    rdzv_backend: Literal["c10d", "etcd-v2"] = "c10d"
    rdzv_endpoint: str | None = None
    """HOST:PORT of the rendezvous; empty: the first host, port 29400 (c10d)."""
    collective_timeout_s: float = 60.0
    """How long a collective waits for a silent host before the group re-forms."""
    join_timeout_s: int = 600
    """How long agents wait for `min_hosts` to gather (a job below minimum waits this long)."""

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

    def elastic(self, nproc: int, max_restarts: int, run_id: str) -> ElasticLaunch:
        n = len(self.hosts)
        return ElasticLaunch(
            endpoint=self.rdzv_endpoint or f"{self.hosts[0].address}:29400",
            min_hosts=self.min_hosts or n,
            max_hosts=n,
            nproc_per_host=nproc,
            run_id=run_id,
            backend=self.rdzv_backend,
            max_restarts=max_restarts,
            join_timeout_s=self.join_timeout_s,
            collective_timeout_s=self.collective_timeout_s,
            torchrun=self.executable(),
        )

    def multihost_command(
        self,
        *,
        run_id: str,
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
        """Write the job spec into `output` and return the command of its launcher."""
        extra = ["--engine", engine]
        if init_from:  # a path every host reads: shared storage, as the corpus is
            extra += ["--init-from", init_from]
        if self.mlflow_tracking_uri or mlflow_uri:
            extra += ["--mlflow", self.mlflow_tracking_uri or mlflow_uri]
        spec = JobSpec(
            hosts=[
                HostSpec(address=h.address, exec=h.exec_prefix, ifname=h.ifname) for h in self.hosts
            ],
            launch=self.elastic(nproc, max_restarts, run_id),
            train=TrainSpec(
                data=str(data),
                output=str(output),
                max_steps=max_steps,
                checkpoint_every=checkpoint_every,
                seed=seed,
                config_file=config_file,
                extra=extra,
            ),
        )
        path = output / "job_spec.json"
        path.write_text(spec.model_dump_json(indent=2), encoding="utf-8")
        cmd = [sys.executable, "-m", "training.multinode", "--spec", str(path)]
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
