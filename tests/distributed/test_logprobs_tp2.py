"""TP=2 (torchrun, 2 gloo ranks): vocab-parallel log-probs equal TP=1 and each rank's logits-shard gradient
equals its slice of the full reference gradient, for the torch path and the Triton kernels (interpreter);
megatron's global parallel state is made to raise, so a kernel that reads it fails the test."""

import pytest

from tests.helpers import WORKERS, run_ranks

pytestmark = pytest.mark.distributed


def test_logprobs_tp2_match_reference_and_tp1():
    res = run_ranks(WORKERS / "logprobs_worker.py", [], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "LOGPROBS_TP2_OK 0" in res.stdout and "LOGPROBS_TP2_OK 1" in res.stdout, res.stdout[-4000:]


def test_worker_fails_when_megatron_state_is_read(tmp_path):
    """The guard itself works: a script that reads parallel state under the same guard fails."""
    script = tmp_path / "reads_state.py"
    script.write_text(
        "import torch.distributed as dist, sys\n"
        f"sys.path.insert(0, {str(WORKERS)!r})\n"
        "from logprobs_worker import _forbid_megatron_state\n"
        "dist.init_process_group('gloo')\n"
        "_forbid_megatron_state()\n"
        "from megatron.core import parallel_state\n"
        "parallel_state.get_tensor_model_parallel_group()\n")
    res = run_ranks(script, [], timeout=300)
    assert res.returncode != 0 and "read megatron's global parallel state" in res.stdout
