"""Where a job listens (issue 12, section 2): on one node, nothing of torch.distributed is reachable from
another address; the rendezvous store of one process is in-process (no socket at all)."""

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, _clean_env, is_loopback, run_ranks

WORKER = ROOT / "tests" / "distributed" / "workers" / "store_worker.py"


def _listening(output: str) -> dict[int, list[str]]:
    rows = re.finditer(r"^LISTEN rank=(\d+) ?(.*)$", output, re.M)
    found = {int(m.group(1)): m.group(2).split() for m in rows}
    assert found, output[-3000:]
    return found


def test_single_process_opens_no_store_and_listens_on_loopback_only():
    proc = subprocess.run([sys.executable, str(WORKER)], env=_clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    addresses = _listening(proc.stdout)[0]
    assert all(is_loopback(a) for a in addresses), addresses


@pytest.mark.distributed
def test_two_ranks_on_one_node_listen_on_loopback_only():
    # srun-style variables, one node: rank 0 holds the TCP store, bound to 127.0.0.1
    proc = run_ranks(WORKER, [], nproc=2, launcher="slurm", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    found = _listening(proc.stdout)
    assert sorted(found) == [0, 1]
    for rank, addresses in found.items():
        assert addresses and all(is_loopback(a) for a in addresses), (rank, addresses)
