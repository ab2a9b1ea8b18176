"""Contract: the group grows when a host joins and shrinks past a partition, never hanging.

- Join: a job started on one host (``--nnodes 1:2``) re-forms at world size 2 when a second
  host's agent starts mid-run, continues from the newest checkpoint and completes.
- Partition: one host's link goes down (``ip link set DEV down``) for longer than the
  collective timeout, then comes back. The collective fails with gloo's timeout (not a
  hang), the group re-forms from the newest checkpoint (with the host again if its link is
  back by then, without it otherwise) and completes; the cut-off host's agent ends too
  (finished with the group, or gave up after its rendezvous timeouts): nothing is left
  running.

Sample accounting stays exact in both.
"""

from __future__ import annotations

import time

from accounting import assert_exact_accounting, summary


def test_host_joining_mid_run_grows_the_group(cluster):
    # Long enough that the second agent has started (seconds under load) before the end.
    job = cluster(2, steps=150, every=5)
    job.start(0)
    job.wait_for_step(10)
    job.start(1)
    assert job.wait([0, 1], timeout=300) == {0: 0, 1: 0}, job.logs()
    s = summary(job.out)
    assert s["world_sizes"][0] == 1 and s["world_sizes"][-1] == 2, s["attempts"]
    assert s["steps"] == 150
    assert_exact_accounting(job.out, steps=150)


def test_partitioned_host_is_noticed_by_timeout_and_the_job_completes(cluster):
    job = cluster(2, steps=40, every=5)
    job.start_all()
    job.wait_for_step(10)
    job.net.cut(1)
    cut_at = time.time()
    time.sleep(job.launch.collective_timeout_s + 6)  # longer than the collective timeout
    job.net.restore(1)
    codes = job.wait([0, 1], timeout=300)
    assert codes[0] == 0, job.logs()
    agent0 = job.agents[0].text()
    assert "Timed out" in agent0 or "timed out" in agent0, agent0[-3000:]
    s = summary(job.out)
    assert s["steps"] == 40 and s["recoveries"] >= 1, s["attempts"]
    reformed = [a for a in s["attempts"] if a["started_at"] > cut_at]
    assert reformed, s["attempts"]
    assert_exact_accounting(job.out, steps=40)
