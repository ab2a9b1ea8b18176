"""Contract: a crashed or interrupted run resumes from its newest good checkpoint, exactly.

On CPU the resumed run ends with weights bitwise equal to an uninterrupted run with the
same seed: after a real SIGKILL of a worker (torchrun restarts the group), after a newest
checkpoint corrupted on disk (skipped with a warning naming it), and under an explicit
c10d rendezvous (the elastic launch form operators use) with the same world size.
A resume under a different world size reshards the data and warns (no bitwise promise).
"""

from __future__ import annotations

import shutil
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkill_of_a_worker_resumes_bitwise_identical(tmp_path, corpus, tiny_config, baseline, tr):
    out = tmp_path / "run"
    result, killed = tr.run_and_kill(
        tr.command(corpus, out, tiny_config, restarts=2), out, rank=1, after_step=10
    )
    assert killed, "the run ended before a worker could be killed"
    assert result.rc == 0, result.stderr[-4000:]
    assert result.summary()["restarts"] == 1
    resumed = result.log(0)
    assert "restart1" in resumed and "resumed from" in resumed
    assert 10 <= result.summary()["resumed_from_step"] < 60
    tr.assert_bitwise_equal(baseline.output, out)


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    tmp_path, corpus, tiny_config, baseline, tr
):
    out = tmp_path / "run"
    shutil.copytree(baseline.output, out)
    shutil.rmtree(out / "model")
    newest = out / "checkpoints" / "step_00000060"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated on disk
    result = tr.run(tr.command(corpus, out, tiny_config), out)
    assert result.rc == 0, result.stderr[-4000:]
    log = result.log(0)
    assert "skipping checkpoint" in log and "step_00000060" in log and "sha256" in log
    assert "resumed from" in log and "step_00000050" in log
    assert result.summary()["resumed_from_step"] == 50
    tr.assert_bitwise_equal(baseline.output, out)


def test_elastic_c10d_rendezvous_restart_same_world_size(
    tmp_path, corpus, tiny_config, baseline, tr
):
    out = tmp_path / "run"
    launcher = [
        "--nnodes",
        "1:1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
    ]
    cmd = tr.command(corpus, out, tiny_config, restarts=1, launcher=launcher)
    result, killed = tr.run_and_kill(cmd, out, rank=0, after_step=20)
    assert killed, "the run ended before a worker could be killed"
    assert result.rc == 0, result.stderr[-4000:]
    summary = result.summary()
    assert summary["restarts"] == 1 and summary["world_size"] == 2
    tr.assert_bitwise_equal(baseline.output, out)


def test_resume_with_a_different_world_size_reshards_and_warns(
    tmp_path, corpus, tiny_config, baseline, tr
):
    out = tmp_path / "run"
    shutil.copytree(baseline.output, out)
    shutil.rmtree(out / "model")
    shutil.rmtree(out / "checkpoints" / "step_00000060")
    result = tr.run(tr.command(corpus, out, tiny_config, nproc=1), out)
    assert result.rc == 0, result.stderr[-4000:]
    log = result.log(0)
    assert "world size changed from 2 to 1" in log and "not be bitwise equal" in log
    summary = result.summary()
    assert summary["steps"] == 60 and summary["world_size"] == 1
    assert summary["resumed_from_step"] == 50
