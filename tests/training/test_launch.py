"""Contract: a multi-host launch bounds every wait and passes torchrun's own parser.

The agent command of ``ElasticLaunch`` parses with torchrun's argument parser into the
elastic range, rendezvous, local address and every rendezvous timeout; the c10d store
host is named explicitly; etcd-v2 speaks plain http; a bad range or endpoint is refused
naming the value; and ``training.multinode`` refuses a bad job spec with exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from training.launch import ElasticLaunch
from training.multinode import main as multinode_main


def _parsed(launch: ElasticLaunch, store: bool):
    cmd = launch.command(
        "10.0.0.2",
        is_store_host=store,
        data=Path("/lake/corpus"),
        output=Path("/out"),
        max_steps=10,
        checkpoint_every=5,
        seed=1,
    )
    return get_args_parser().parse_args(cmd[1:])


def test_agent_command_carries_the_range_rendezvous_and_timeouts():
    launch = ElasticLaunch(endpoint="10.0.0.1:29400", min_hosts=2, max_hosts=3, join_timeout_s=9)
    parsed = _parsed(launch, store=False)
    assert parsed.nnodes == "2:3" and parsed.rdzv_backend == "c10d"
    assert parsed.rdzv_endpoint == "10.0.0.1:29400" and parsed.local_addr == "10.0.0.2"
    conf = dict(kv.split("=") for kv in parsed.rdzv_conf.split(","))
    assert conf["join_timeout"] == "9" and conf["is_host"] == "false"
    assert {"last_call_timeout", "close_timeout", "read_timeout", "keep_alive_interval"} <= set(
        conf
    )
    args = parsed.training_script_args
    assert args[args.index("--collective-timeout-s") + 1] == "60.0"
    assert "is_host=true" in _parsed(launch, store=True).rdzv_conf


def test_etcd_backend_uses_http_and_no_store_host():
    launch = ElasticLaunch(endpoint="10.0.0.9:2379", min_hosts=1, max_hosts=3, backend="etcd-v2")
    conf = _parsed(launch, store=True).rdzv_conf
    assert "protocol=http" in conf and "is_host" not in conf


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"min_hosts": 3, "max_hosts": 2}, "min_hosts=3"), ({"endpoint": "nohost"}, "'nohost'")],
)
def test_bad_launch_settings_are_refused_naming_the_value(fields, named):
    with pytest.raises(ValueError, match=named):
        ElasticLaunch(**{"endpoint": "h:1", "min_hosts": 1, "max_hosts": 2, **fields})


def test_multinode_refuses_a_bad_spec(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text('{"hosts": [], "launch": {"endpoint": "h:1", "min_hosts": 1, "max_hosts": 1}}')
    assert multinode_main(["--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "error: --spec" in err and "hosts" in err and "train" in err
