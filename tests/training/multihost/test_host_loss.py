"""Contract: a job across hosts survives a host dying, and accounts for every sample.

Two hosts (network namespaces), one worker each. Every process of one host (its torchrun
agent and its workers) is SIGKILLed after a checkpoint.

- Elastic (``--nnodes 1:2``): the survivor notices, re-forms the group at world size 1,
  resumes from the newest checkpoint and completes.
- Fixed size (``--nnodes 2:2``): the survivor waits for the host; once it is back the group
  re-forms at world size 2 and the final weights are bitwise equal to an uninterrupted
  2-process run with the same seed.

In both, within each epoch every training block is trained on exactly once.
"""

from __future__ import annotations

import time

from accounting import assert_exact_accounting, summary


def test_whole_host_killed_job_continues_smaller_and_completes(cluster):
    job = cluster(2, steps=40, every=5)
    job.start_all()
    job.wait_for_step(10)
    job.kill(1)
    assert job.wait([0], timeout=300) == {0: 0}, job.logs()
    s = summary(job.out)
    assert s["steps"] == 40
    assert s["world_sizes"][0] == 2 and s["world_sizes"][-1] == 1, s["attempts"]
    assert s["recoveries"] >= 1 and s["world_size_changes"] >= 1
    assert "world size changed from 2 to 1" in (job.out / "logs" / "rank0.log").read_text()
    assert_exact_accounting(job.out, steps=40)


def test_fixed_size_job_waits_for_the_host_and_ends_bitwise_identical(cluster, baseline, tr):
    job = cluster(2, steps=60, every=10, min_hosts=2)
    job.start_all()
    job.wait_for_step(20)
    job.kill(1)
    time.sleep(3)  # the host is away for a while: the survivor must wait, not go on alone
    assert job.agents[0].proc.poll() is None, "the agent gave up instead of waiting"
    job.start(1)  # the host comes back
    assert job.wait([0, 1], timeout=300) == {0: 0, 1: 0}, job.logs()
    s = summary(job.out)
    assert set(s["world_sizes"]) == {2} and s["recoveries"] >= 1, s["attempts"]
    assert_exact_accounting(job.out, steps=60)
    tr.assert_bitwise_equal(baseline.output, job.out)
