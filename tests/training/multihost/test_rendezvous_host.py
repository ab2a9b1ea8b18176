"""Contract: what happens when the host holding the rendezvous dies, and the path that survives.

- c10d (the default): the rendezvous store lives in the torchrun agent of host 0. When
  host 0 dies, the other hosts cannot re-form: each agent fails within its rendezvous
  timeouts with a ``RendezvousConnectionError`` and exits non-zero (the job stops; nothing
  hangs). The operator starts the job again with the rendezvous on a surviving host, and
  it resumes from the newest checkpoint and completes.
- etcd-v2 with etcd on a host of its own: host 0 dying is an ordinary host loss. The
  survivors re-form at the smaller world size and complete, with exact sample accounting.
"""

from __future__ import annotations

from accounting import assert_exact_accounting, summary


def test_c10d_store_host_dying_stops_the_job_and_a_relaunch_resumes(cluster):
    job = cluster(3, steps=60, every=5, read_timeout_s=10, join_timeout_s=30)
    job.start_all()
    job.wait_for_step(10)
    job.kill(0)
    codes = job.wait([1, 2], timeout=240)
    assert codes[1] != 0 and codes[2] != 0, job.logs()
    for i in (1, 2):
        text = job.agents[i].text()
        assert "RendezvousConnectionError" in text, text[-3000:]
    assert not (job.out / "model").exists()
    job.move_rendezvous(f"{job.net.hosts[1].address}:29400", store_host=1)
    job.start(1)
    job.start(2)
    assert job.wait([1, 2], timeout=300) == {1: 0, 2: 0}, job.logs()
    s = summary(job.out)
    assert s["steps"] == 60 and s["resumed_from_step"] >= 10
    assert s["world_sizes"][0] == 3 and s["world_sizes"][-1] == 2, s["attempts"]
    assert_exact_accounting(job.out, steps=60)


def test_etcd_rendezvous_survives_the_first_host_dying(cluster):
    job = cluster(3, steps=40, every=5, service_hosts=1, backend="etcd-v2")
    job.move_rendezvous(job.start_etcd(3))
    job.start_all()
    job.wait_for_step(10)
    job.kill(0)
    assert job.wait([1, 2], timeout=300) == {1: 0, 2: 0}, job.logs()
    s = summary(job.out)
    assert s["world_sizes"][0] == 3 and s["world_sizes"][-1] == 2, s["attempts"]
    assert_exact_accounting(job.out, steps=40)
