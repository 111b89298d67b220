"""The CPU compatibility layer: off and untouched when CUDA is present, complete and idempotent when not.

``enable_cpu_compat`` patches process-global state, so each scenario runs in a fresh interpreter and reports
what it saw as JSON on its last stdout line. ``CpuRNGStatesTracker`` is a plain class and is tested here.
"""

import json
import subprocess
import sys

import pytest
import torch

from megatron_align.distributed.cpu_compat import CpuRNGStatesTracker
from tests.helpers import _clean_env


def _run(code: str, timeout: int = 120) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


FORCED_CUDA = """
import json, sys, torch
from torch.overrides import _get_current_function_mode_stack
torch.cuda.is_available = lambda: True
orig = (torch.cuda.current_device, torch.cuda.synchronize, torch.Tensor.type, torch.Generator)
from megatron_align.distributed import cpu_compat
on = cpu_compat.enable_cpu_compat()
now = (torch.cuda.current_device, torch.cuda.synchronize, torch.Tensor.type, torch.Generator)
print(json.dumps({
    "on": on, "active": cpu_compat.cpu_compat_active(),
    "unpatched": [a is b for a, b in zip(orig, now)],
    "modes": len(_get_current_function_mode_stack()),
    "megatron_imported": "megatron.core" in sys.modules,
}))
"""


def test_does_nothing_when_cuda_is_available():
    r = _run(FORCED_CUDA)
    assert r["on"] is False and r["active"] is False
    assert r["unpatched"] == [True, True, True, True]  # torch.cuda.current_device is still the original
    assert r["modes"] == 0  # no TorchFunctionMode pushed
    assert r["megatron_imported"] is False  # megatron's RNG tracker was not touched either


NO_CUDA = """
import json, logging, torch
messages = []
class Grab(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
log = logging.getLogger("megatron_align.distributed.cpu_compat")
log.addHandler(Grab()); log.setLevel(logging.INFO)
from megatron_align.distributed import cpu_compat
first, second = cpu_compat.enable_cpu_compat(), cpu_compat.enable_cpu_compat()
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
r = {"first": first, "second": second, "active": cpu_compat.cpu_compat_active(),
     "no_cuda_lines": sum("no CUDA device" in m for m in messages)}
x = torch.ones(2)
r["devices"] = {
    "empty_cuda": torch.empty(3, device="cuda").device.type,
    "empty_int": torch.empty(3, device=0).device.type,
    "zeros_cuda0": torch.zeros(2, device=torch.device("cuda:0")).device.type,
    "current_device": torch.empty(1, device=torch.cuda.current_device()).device.type,
    "to_cuda": x.to("cuda").device.type,
    "to_int": x.to(torch.cuda.current_device()).device.type,
    "dot_cuda": x.cuda().device.type,
    "new_empty": x.new_empty(4, device="cuda").device.type,
    "pinned": torch.empty(2, pin_memory=True).device.type,
    "meta_untouched": torch.empty(2, device="meta").device.type,
}
r["types"] = [x.type(), x.bfloat16().type(), x.long().type(), x.type(torch.float64).dtype == torch.float64,
              x.type("torch.cuda.HalfTensor").dtype == torch.float16]
g = torch.Generator(device="cuda")
r["generator"] = [g.device.type, isinstance(g, torch.Generator),
                  isinstance(torch.Generator(), torch.Generator)]
r["tracker"] = type(get_cuda_rng_tracker()).__name__
ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
ev0.record(); torch.cuda.synchronize(); ev1.record()
r["event_ms"] = ev0.elapsed_time(ev1)
with torch.cuda.stream(torch.cuda.Stream()):
    torch.cuda.current_stream().synchronize()
r["cuda_queries"] = [torch.cuda.current_device(), torch.cuda.device_count(), torch.cuda.memory_allocated()]
print(json.dumps(r))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the layer stays off on a CUDA machine")
def test_enabled_without_cuda():
    r = _run(NO_CUDA)
    assert r["first"] is True and r["second"] is True and r["active"] is True
    assert r["no_cuda_lines"] == 1  # logged once although enabled twice
    meta = r["devices"].pop("meta_untouched")
    assert meta == "meta"
    assert set(r["devices"].values()) == {"cpu"}, r["devices"]
    assert r["types"] == ["torch.cuda.FloatTensor", "torch.cuda.BFloat16Tensor", "torch.cuda.LongTensor",
                          True, True]
    assert r["generator"] == ["cpu", True, True]
    assert r["tracker"] == "CpuRNGStatesTracker"
    assert r["event_ms"] >= 0.0
    assert r["cuda_queries"] == [0, 0, 0]


def _draws(seed: int, n: int, k: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(k, generator=g) for _ in range(n)]


def test_rng_tracker_fork_streams_are_reproducible_distinct_and_restore_outer_state():
    tracker = CpuRNGStatesTracker()
    assert not tracker.is_initialized()
    tracker.add("a", 11)
    tracker.add("b", 22)
    torch.manual_seed(0)
    with tracker.fork("a"):
        a1 = torch.rand(4)
    with tracker.fork("b"):
        b1 = torch.rand(4)
    with tracker.fork("a"):
        a2 = torch.rand(4)  # continues stream "a", does not restart it
    outer = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(outer, torch.rand(4))  # the forks left the default generator where it was
    ref_a, ref_b = _draws(11, 2), _draws(22, 1)
    assert torch.equal(a1, ref_a[0]) and torch.equal(a2, ref_a[1]) and torch.equal(b1, ref_b[0])
    assert not torch.equal(a1, b1)

    # a second tracker with the same seeds reproduces the streams
    other = CpuRNGStatesTracker()
    other.add("a", 11)
    with other.fork("a"):
        assert torch.equal(torch.rand(4), a1)


def test_rng_tracker_states_roundtrip_errors_and_exception_safety():
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 5)
    saved = {k: v.clone() for k, v in tracker.get_states().items()}
    with tracker.fork("a"):
        first = torch.rand(3)
    tracker.set_states(saved)
    with tracker.fork("a"):
        assert torch.equal(torch.rand(3), first)
    with pytest.raises(RuntimeError, match="already exists"):
        tracker.add("c", 5)
    with pytest.raises(RuntimeError, match="already exists"):
        tracker.add("a", 6)
    with pytest.raises(RuntimeError, match="not added"):
        with tracker.fork("missing"):
            pass
    state = torch.get_rng_state()
    with pytest.raises(ValueError):
        with tracker.fork("a"):
            torch.rand(2)
            raise ValueError
    assert torch.equal(torch.get_rng_state(), state)
    tracker.reset()
    assert not tracker.is_initialized() and tracker.get_states() == {}


BACKWARD = """
import json, torch
from megatron_align.distributed import cpu_compat
cpu_compat.enable_cpu_compat()

class CudaInBackward(torch.autograd.Function):
    # what megatron's sequence-parallel Functions do: allocate on current_device() inside backward
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        buf = torch.empty(g.shape, dtype=g.dtype, device=torch.cuda.current_device())
        return buf.copy_(g) * 2

x = torch.arange(4.0, requires_grad=True)
w = torch.ones(4, requires_grad=True)
out = {}
CudaInBackward.apply(x * w).sum().backward()                          # Tensor.backward, implicit scalar grad
out["tensor_backward"] = x.grad.tolist(); x.grad = None
y = CudaInBackward.apply(x * w)
torch.autograd.backward(y, grad_tensors=torch.full((4,), 0.5), retain_graph=True)  # explicit grad
out["autograd_backward"] = x.grad.tolist(); x.grad = None; w.grad = None
torch.autograd.backward([y.sum()], inputs=[w])                        # inputs= restricts the leaves
out["inputs_only"] = [x.grad is None, w.grad.tolist()]
try:
    CudaInBackward.apply(x * w).backward()                            # non-scalar, no grad: torch's error
except RuntimeError as e:
    out["error"] = str(e)
try:
    torch.autograd.backward([x * 2, x * 3], grad_tensors=torch.ones(4))  # 2 roots, 1 gradient: torch's error
except RuntimeError as e:
    out["count_error"] = str(e)
print(json.dumps(out))
"""


def test_backward_runs_with_the_layer_active():
    """Megatron Functions allocate on current_device() in backward (sequence parallelism); torch 2.13 runs
    ``backward`` inside the mode's handler with the mode off the stack, so the layer re-enters it."""
    r = _run(BACKWARD)
    assert r["tensor_backward"] == [2.0, 2.0, 2.0, 2.0]
    assert r["autograd_backward"] == [1.0, 1.0, 1.0, 1.0]
    assert r["inputs_only"] == [True, [0.0, 2.0, 4.0, 6.0]]
    assert "implicitly created only for scalar outputs" in r["error"]
    assert "got 2 tensors and 1 gradients" in r["count_error"]
