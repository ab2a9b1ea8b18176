"""Several hosts on one machine: network namespaces on a bridge, one torchrun agent each.

Each host is a network namespace with its own address on ``10.99.X.0/24``, joined to a
bridge in the root namespace by a veth pair. Processes started in a host see only its
interface (``GLOO_SOCKET_IFNAME``) and loopback, so killing every process of a namespace
is a host dying, and taking its veth down (``ip link set DEV down``) is a partition: no
packets, no resets, as when a switch port or cable fails. The filesystem is shared, as a
cluster's shared checkpoint volume is.

Names carry a per-network tag so concurrent runs never touch each other's devices, and
``close()`` removes everything it made even after a failure (also on interpreter exit).
Needs root (``ip netns``); used by the multi-host tests and ``benchmarks/train_goodput.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Inside every namespace the host's interface has this name (names are per namespace).
IFNAME = "mh0"
IP_TIMEOUT_S = 10


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=check
    )


def _subnets_in_use() -> set[int]:
    out = ip("-o", "-4", "addr", "show").stdout
    return {int(w.split(".")[2]) for w in out.split() if w.startswith("10.99.")}


@dataclass
class Host:
    index: int
    netns: str
    veth: str  # root-namespace end; down = partitioned
    address: str


@dataclass
class Network:
    """``n`` hosts as namespaces on one bridge; ``close()`` undoes everything."""

    n: int
    tag: str = ""
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    _closed: bool = False

    def __post_init__(self) -> None:
        self.tag = self.tag or f"{os.getpid() % 100000:05d}"
        used = _subnets_in_use()
        subnet = next(x for x in range(20 + os.getpid() % 200, 255) if x not in used)
        self.bridge = f"mhb{self.tag}"
        atexit.register(self.close)
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"10.99.{subnet}.254/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i in range(self.n):
                self.hosts.append(self._add_host(i, subnet))
        except BaseException:
            self.close()
            raise

    def _add_host(self, i: int, subnet: int) -> Host:
        host = Host(i, f"mh{self.tag}h{i}", f"mhv{self.tag}{i}", f"10.99.{subnet}.{i + 1}")
        ip("netns", "add", host.netns)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", IFNAME, "netns", host.netns)
        ip("link", "set", host.veth, "master", self.bridge)
        ip("link", "set", host.veth, "up")
        ns = ("-n", host.netns)
        ip(*ns, "addr", "add", f"{host.address}/24", "dev", IFNAME)
        ip(*ns, "link", "set", IFNAME, "up")
        ip(*ns, "link", "set", "lo", "up")
        return host

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[i].netns]

    def pids(self, i: int) -> list[int]:
        out = ip("netns", "pids", self.hosts[i].netns, check=False).stdout
        return [int(p) for p in out.split()]

    def kill(self, i: int) -> list[int]:
        """SIGKILL every process in host ``i`` (agent and workers alike): the host dies."""
        killed = self.pids(i)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + IP_TIMEOUT_S
        while self.pids(i) and time.monotonic() < deadline:
            time.sleep(0.05)
        return killed

    def cut(self, i: int) -> None:
        """Partition host ``i``: its link goes down, packets to and from it are lost."""
        ip("link", "set", self.hosts[i].veth, "down")

    def restore(self, i: int) -> None:
        ip("link", "set", self.hosts[i].veth, "up")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for i, host in enumerate(self.hosts):
            self.kill(i)
            ip("link", "del", host.veth, check=False)
            ip("netns", "del", host.netns, check=False)
        ip("link", "del", self.bridge, check=False)


@dataclass
class Agent:
    """One ``torchrun`` agent on one host, its output in ``log``."""

    host: int
    proc: subprocess.Popen
    log: Path

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_agent(
    net: Network, i: int, command: list[str], env: dict[str, str], log: Path, cwd: Path
) -> Agent:
    """Run ``command`` (a torchrun command line) in host ``i`` with gloo bound to its link."""
    env = {**env, "GLOO_SOCKET_IFNAME": IFNAME, "TP_SOCKET_IFNAME": IFNAME}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [*net.exec_prefix(i), *command],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Agent(i, proc, log)
