"""Fixtures for multi-host training: a job of N hosts (network namespaces), one agent each.

``cluster(n)`` makes the hosts (``hosts.Network``) and returns a ``Job`` that starts,
kills, partitions and restores hosts (and can run etcd on an extra host), and whose teardown kills every agent and removes
every namespace and link it made, whether the test passed or not. Agents run the real
``torchrun -m training`` with the c10d rendezvous on host 0, gloo bound to each host's
own interface, and short timeouts so a failure is noticed in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

# Helpers beside this file (importlib mode puts no test folder on sys.path).
sys.path.insert(0, str(Path(__file__).parent))
from hosts import Agent, Network, start_agent  # noqa: E402

from training.launch import ElasticLaunch  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
RDZV_PORT = 29400


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


@dataclass
class Job:
    net: Network
    launch: ElasticLaunch
    out: Path
    corpus: Path
    config: Path
    env: dict[str, str]
    steps: int = 60
    every: int = 5
    seed: int = 0
    train_hosts: int = 0  # hosts that run agents; any after them run services (etcd)
    store_host: int = 0  # the host whose agent holds the c10d rendezvous store
    agents: dict[int, Agent] = field(default_factory=dict)
    started: dict[int, int] = field(default_factory=dict)
    services: list[subprocess.Popen] = field(default_factory=list)

    def start(self, i: int) -> Agent:
        """Start (or start again) the agent of host ``i``."""
        host = self.net.hosts[i]
        cmd = self.launch.command(
            host.address,
            is_store_host=i == self.store_host,
            data=self.corpus,
            output=self.out,
            max_steps=self.steps,
            checkpoint_every=self.every,
            seed=self.seed,
            config_file=self.config,
        )
        self.started[i] = self.started.get(i, 0) + 1
        log = self.out.parent / f"agent{i}.{self.started[i]}.log"
        self.agents[i] = start_agent(self.net, i, cmd, self.env, log, REPO)
        return self.agents[i]

    def start_all(self) -> None:
        for i in range(self.train_hosts):
            self.start(i)

    def move_rendezvous(self, endpoint: str, store_host: int | None = None) -> None:
        """Point later starts at another rendezvous endpoint (and c10d store host)."""
        self.launch = replace(self.launch, endpoint=endpoint)
        if store_host is not None:
            self.store_host = store_host

    def start_etcd(self, i: int) -> str:
        """Run Debian's etcd (v2 API on, as torch's etcd-v2 rendezvous needs) on host ``i``."""
        etcd = shutil.which("etcd")
        if etcd is None:
            pytest.fail("etcd not found: run `sudo bash scripts/ensure_etcd.sh` first")
        addr = self.net.hosts[i].address
        data = self.out.parent / "etcd"
        log = (self.out.parent / "etcd.log").open("ab")
        proc = subprocess.Popen(
            [
                *self.net.exec_prefix(i),
                etcd,
                "--name",
                "rdzv",
                "--data-dir",
                str(data),
                "--enable-v2=true",
                "--listen-client-urls",
                f"http://{addr}:2379",
                "--advertise-client-urls",
                f"http://{addr}:2379",
                "--listen-peer-urls",
                f"http://{addr}:2380",
                "--initial-advertise-peer-urls",
                f"http://{addr}:2380",
                "--initial-cluster",
                f"rdzv=http://{addr}:2380",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.services.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [*self.net.exec_prefix(i), sys.executable, "-c", _ETCD_PROBE, addr],
                capture_output=True,
                timeout=30,
            )
            if probe.returncode == 0:
                return f"{addr}:2379"
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        pytest.fail(f"etcd did not start:\n{(self.out.parent / 'etcd.log').read_text()[-3000:]}")

    def kill(self, i: int) -> None:
        self.net.kill(i)
        self.agents[i].proc.wait(timeout=10)

    def wait(self, hosts: list[int], timeout: float) -> dict[int, int]:
        """Exit codes of the given hosts' agents, each waited for within ``timeout`` overall."""
        deadline = time.monotonic() + timeout
        return {i: self.agents[i].wait(max(0.1, deadline - time.monotonic())) for i in hosts}

    def wait_for_step(self, step: int, timeout: float = 180) -> None:
        """Until a checkpoint at or after ``step`` exists (training is past it)."""
        deadline = time.monotonic() + timeout
        ckpts = self.out / "checkpoints"
        while time.monotonic() < deadline:
            done = [int(p.name[5:]) for p in ckpts.glob("step_*")] if ckpts.is_dir() else []
            if done and max(done) >= step:
                return
            if all(a.proc.poll() is not None for a in self.agents.values()):
                raise AssertionError(f"every agent exited before step {step}:\n{self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"no checkpoint at step >= {step} in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.out.parent.glob("agent*.log"))
        )

    def stop(self) -> None:
        for proc in [a.proc for a in self.agents.values()] + self.services:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


_ETCD_PROBE = """
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}:2379/v2/keys", timeout=2).read()
"""


@pytest.fixture
def cluster(tmp_path, corpus, tiny_config, tr):
    """``cluster(n, **launch)`` -> a ``Job`` of ``n`` hosts; all torn down after the test."""
    skip = _can_make_namespaces()
    if skip:
        pytest.fail(skip)  # the suite runs as root in CI: a missing capability is a failure
    jobs: list[Job] = []

    def make(n: int, steps: int = 60, every: int = 5, service_hosts: int = 0, **launch) -> Job:
        net = Network(n + service_hosts, tag=f"{os.getpid() % 1000:03d}{len(jobs):02d}")
        base = ElasticLaunch(
            endpoint=f"{net.hosts[0].address}:{RDZV_PORT}",
            min_hosts=1,
            max_hosts=n,
            torchrun=TORCHRUN,
            run_id=f"test-{tmp_path.name}"[:60],
            join_timeout_s=60,
            # Short enough to notice a partition quickly, long enough for a loaded CI host.
            collective_timeout_s=20,
        )
        job = Job(
            net=net,
            launch=replace(base, **launch),
            out=tmp_path / f"job{len(jobs)}" / "run",
            corpus=corpus,
            config=tiny_config,
            env=tr.env(),
            steps=steps,
            every=every,
            train_hosts=n,
        )
        job.out.parent.mkdir(parents=True)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        try:
            job.stop()
        finally:
            job.net.close()


@pytest.fixture
def network():
    """``network(n)`` -> bare hosts (no agents); removed after the test."""
    skip = _can_make_namespaces()
    if skip:
        pytest.fail(skip)
    made: list[Network] = []

    def make(n: int) -> Network:
        made.append(Network(n, tag=f"{os.getpid() % 1000:03d}d{len(made)}"))
        return made[-1]

    yield make
    for net in made:
        net.close()
