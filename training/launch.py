"""The torchrun command line of one host of a multi-host (elastic) training job.

One agent per host, all started with the same ``--nnodes MIN:MAX`` and rendezvous: the
group forms once ``min_hosts`` agents have joined (waiting ``last_call_s`` for more) and
re-forms whenever a host is lost or a new one asks to join. Timeouts bound every wait:

- ``join_timeout_s``: how long an agent waits for ``min_hosts`` to gather before giving up
  (a job below its minimum waits this long for hosts to come back, then fails);
- ``keep_alive_s`` x ``keep_alive_attempts``: a host with no heartbeat for that long is
  dropped from the rendezvous;
- ``read_timeout_s``: each request to the rendezvous store (an unreachable store fails the
  agent after this long);
- ``collective_timeout_s`` (a training flag): the longest a collective waits for a silent
  peer, i.e. how long a partition stalls the survivors before they re-form.

Backends: ``c10d`` keeps the rendezvous state in a TCP store inside the agent on the
``endpoint`` host (no extra service, but that host is a single point of failure);
``etcd-v2`` keeps it in an etcd server that outlives any training host (see README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Backend = Literal["c10d", "etcd-v2"]


@dataclass(frozen=True)
class ElasticLaunch:
    endpoint: str  # HOST:PORT of the rendezvous (c10d: the first host; etcd-v2: etcd)
    min_hosts: int
    max_hosts: int
    nproc_per_host: int = 1
    run_id: str = "sovereign-lm"
    backend: Backend = "c10d"
    max_restarts: int = 10
    join_timeout_s: int = 600
    last_call_s: int = 2
    close_timeout_s: int = 10
    read_timeout_s: int = 30
    keep_alive_s: int = 2
    keep_alive_attempts: int = 3
    monitor_interval_s: float = 0.5
    collective_timeout_s: float = 60.0
    torchrun: str = "torchrun"
    extra_rdzv_conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_hosts <= self.max_hosts:
            raise ValueError(
                f"min_hosts={self.min_hosts} and max_hosts={self.max_hosts}: need "
                "1 <= min_hosts <= max_hosts"
            )
        host, _, port = self.endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"rendezvous endpoint {self.endpoint!r} must be HOST:PORT")

    def rdzv_conf(self, is_store_host: bool | None = None) -> str:
        """``--rdzv-conf``; ``is_store_host=None`` lets torch decide from the hostname."""
        conf = {
            "join_timeout": self.join_timeout_s,
            "last_call_timeout": self.last_call_s,
            "close_timeout": self.close_timeout_s,
            "keep_alive_interval": self.keep_alive_s,
            "keep_alive_max_attempt": self.keep_alive_attempts,
            "read_timeout": self.read_timeout_s,
        }
        if self.backend == "etcd-v2":
            conf["protocol"] = "http"
        elif is_store_host is not None:
            conf["is_host"] = str(is_store_host).lower()
        conf.update(self.extra_rdzv_conf)
        return ",".join(f"{k}={v}" for k, v in conf.items())

    def command(
        self,
        local_addr: str,
        *,
        is_store_host: bool,
        data: Path,
        output: Path,
        max_steps: int,
        checkpoint_every: int,
        seed: int,
        config_file: Path | str | None = None,
        extra: list[str] | None = None,
    ) -> list[str]:
        """The agent's command line on the host reachable at ``local_addr``."""
        cmd = [
            self.torchrun,
            "--nnodes",
            f"{self.min_hosts}:{self.max_hosts}",
            "--nproc-per-node",
            str(self.nproc_per_host),
            "--rdzv-backend",
            self.backend,
            "--rdzv-endpoint",
            self.endpoint,
            "--rdzv-id",
            self.run_id,
            "--rdzv-conf",
            self.rdzv_conf(is_store_host),
            "--local-addr",
            local_addr,
            "--max-restarts",
            str(self.max_restarts),
            "--monitor-interval",
            str(self.monitor_interval_s),
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
            "--collective-timeout-s",
            str(self.collective_timeout_s),
        ]
        if config_file:
            cmd += ["--config", str(config_file)]
        return cmd + (extra or [])
