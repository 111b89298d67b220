"""Launcher detection: Slurm hostlist expansion, and which of torchrun / srun / nothing started a process.

Pure functions over an explicit environment dict; nothing here initialises torch.distributed.
"""

import socket

import pytest

from megatron_align.distributed.launch import LaunchEnv, detect_launch_env, expand_hostlist


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node[01-03,07],gpu-a", ["node01", "node02", "node03", "node07", "gpu-a"]),
        ("a[1-2]-ib", ["a1-ib", "a2-ib"]),
        ("login1", ["login1"]),
        ("host-a,host-b", ["host-a", "host-b"]),
        ("node[8-11]", ["node8", "node9", "node10", "node11"]),
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("x[5],y", ["x5", "y"]),
    ],
)
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5",
            "MASTER_PORT": "29501"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "2",
         "SLURM_JOB_NODELIST": "node[01-03,07],gpu-a", "SLURM_JOB_ID": "123456"}


def test_torchrun_variables():
    env = detect_launch_env(dict(TORCHRUN))
    assert env == LaunchEnv(rank=3, world_size=8, local_rank=1, master_addr="10.0.0.5", master_port=29501,
                            launcher="torchrun", single_node=False)


@pytest.mark.parametrize("extra, single", [
    ({"LOCAL_WORLD_SIZE": "8"}, True), ({"LOCAL_WORLD_SIZE": "4"}, False), ({}, False)])
def test_torchrun_single_node_is_local_world_equal_to_world(extra, single):
    assert detect_launch_env({**TORCHRUN, **extra}).single_node is single


@pytest.mark.parametrize("extra, single", [
    ({"SLURM_NNODES": "1"}, True), ({"SLURM_JOB_NUM_NODES": "1"}, True), ({"SLURM_NNODES": "2"}, False),
    ({}, False)])
def test_slurm_single_node_from_node_count(extra, single):
    assert detect_launch_env({**SLURM, **extra}).single_node is single


def test_nothing_set_is_single_node():
    assert detect_launch_env({}).single_node is True


def test_slurm_master_is_first_host_and_port_derived_from_job_id():
    env = detect_launch_env(dict(SLURM))
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("slurm", 5, 16, 2)
    assert env.master_addr == "node01"
    assert env.master_port == 15000 + 123456 % 20000
    # another job on the same node gets another port
    assert detect_launch_env(dict(SLURM, SLURM_JOB_ID="123457")).master_port != env.master_port


def test_slurm_master_port_and_nodelist_fallbacks():
    env = detect_launch_env(dict(SLURM, MASTER_PORT="40000"))
    assert env.master_port == 40000 and env.master_addr == "node01"
    no_job_nodelist = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"}
    env = detect_launch_env(dict(no_job_nodelist, SLURM_NODELIST="a[1-2]-ib"))
    assert env.master_addr == "a1-ib"
    env = detect_launch_env(dict(SLURM, MASTER_ADDR="10.1.1.1"))
    assert env.master_addr == "10.1.1.1"


def test_torchrun_takes_precedence_over_slurm():
    # torchrun launched inside an sbatch allocation: both sets present, torchrun's ranks are the real ones
    env = detect_launch_env({**SLURM, **TORCHRUN})
    assert env.launcher == "torchrun"
    assert (env.rank, env.world_size, env.local_rank) == (3, 8, 1)
    assert (env.master_addr, env.master_port) == ("10.0.0.5", 29501)


def test_nothing_set_is_single_process_with_free_port():
    env = detect_launch_env({})
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("single", 0, 1, 0)
    assert env.master_addr == "127.0.0.1"
    assert 0 < env.master_port < 65536
    with socket.socket() as s:  # the port was free (released again by detect_launch_env)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", env.master_port))


def test_partial_variables_do_not_count():
    # RANK without WORLD_SIZE (or SLURM_PROCID without SLURM_NTASKS) is not a launch
    assert detect_launch_env({"RANK": "1"}).launcher == "single"
    assert detect_launch_env({"SLURM_PROCID": "1", "SLURM_JOB_ID": "7"}).launcher == "single"
