"""The CPU compatibility layer: lets megatron-core run on a machine without a CUDA device.

This is the one documented exception to "never monkey-patch someone else's module" (DESIGN.md, habit 7).
It is confined to this file, switches on only when ``torch.cuda.is_available()`` is False, logs once that it
did, and never edits megatron's files. Every place megatron-core 0.16 hard-codes CUDA that we met, and what
this layer does about it, is listed in docs/cpu_compat.md.

What it does, in one place:
1. A ``TorchFunctionMode`` that rewrites CUDA device arguments (``"cuda"``, ``"cuda:0"``,
   ``torch.device("cuda")``, bare ints as megatron passes ``torch.cuda.current_device()``) to CPU, drops
   ``pin_memory=True`` and turns ``Tensor.cuda()`` into a no-op.
2. ``torch.cuda`` queries that megatron calls unconditionally answer as a single fake device 0:
   ``current_device``, ``set_device``, ``synchronize``, ``manual_seed(_all)``, ``empty_cache``,
   ``current_stream`` / ``Stream`` / ``stream`` / ``Event`` (perf-counter stand-ins), ``nvtx`` ranges.
3. A CPU RNG tracker with the interface of megatron's ``CudaRNGStatesTracker``, installed as megatron's
   global tracker, so ``get_cuda_rng_tracker().fork()`` swaps CPU generator states.
4. ``Tensor.type()`` without arguments reports ``torch.cuda.*Tensor`` names for CPU tensors, because the
   optimizer wrappers and grad clipping dispatch on those strings.
5. Inference helpers: ``torch.Generator(device="cuda")`` gives a CPU generator.

``paused()`` takes the rewriting mode off the stack for a block that places every tensor itself (the lean
generation forward, ``generation/lean_forward.py``): the mode's Python dispatch costs a few microseconds on
every torch call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

_STATE = {"enabled": False, "mode": None}
_LOCK = threading.Lock()

# Tensor.type() strings the optimizer code compares against.
_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}

_CPU = torch.device("cpu")


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # Megatron passes torch.cuda.current_device() (an int) as device=.
    return isinstance(dev, int) and not isinstance(dev, bool)


def _fix_device(dev):
    return _CPU if _is_cuda_device(dev) else dev


def _backward_with_mode(mode, func, args, kwargs) -> bool:
    """Run ``torch.autograd.backward`` / ``Tensor.backward`` with ``mode`` active; False if the call is not
    one this handles (the caller then runs it as torch would).

    torch 2.13's ``backward`` dispatches to torch-function modes, and torch runs a mode's handler with the
    mode taken off the stack: the whole backward pass would run unrewritten, and megatron's autograd Functions
    that allocate on ``current_device()`` in backward (sequence parallelism's all-gather and reduce-scatter
    buffers, ``tensor_parallel/layers.py:551``, ``mappings.py``) would fail on CPU. Calling ``backward`` again
    inside ``with mode:`` would dispatch straight back here, so the roots are passed as gradient edges
    (``torch.autograd.graph.get_gradient_edge``), which are not tensors and do not dispatch; the engine then
    runs with the mode on the stack. Implicit gradients of scalar roots are made here as torch makes them."""
    if func is torch.Tensor.backward:
        names = ("tensors", "grad_tensors", "retain_graph", "create_graph", "inputs")
    else:
        names = ("tensors", "grad_tensors", "retain_graph", "create_graph", "grad_variables", "inputs")
    call = dict(zip(names, args), **kwargs)
    if "gradient" in call:  # Tensor.backward's keyword
        call["grad_tensors"] = call.pop("gradient")
    if call.get("grad_variables") is not None:
        return False
    tensors = call["tensors"]
    tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    grads = call.get("grad_tensors")
    if grads is None:
        grads = (None,) * len(tensors)
    elif isinstance(grads, torch.Tensor):
        grads = (grads,)  # one gradient for several roots is torch's error ("got 2 tensors and 1 gradients")
    inputs = call.get("inputs")
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    if len(grads) != len(tensors) or any(type(t) is not torch.Tensor or not t.requires_grad for t in tensors):
        return False  # unusual calls (subclasses, no graph): torch's own path and errors
    filled = []
    for t, g in zip(tensors, grads):
        if g is None:
            if t.numel() != 1:
                return False  # torch raises its "grad can be implicitly created only for scalar outputs"
            g = torch.ones_like(t, memory_format=torch.preserve_format)
        filled.append(g)
    edge = torch.autograd.graph.get_gradient_edge
    in_edges = (None if inputs is None
                else tuple(edge(i) if isinstance(i, torch.Tensor) else i for i in inputs))
    with mode:
        torch.autograd.backward(tuple(edge(t) for t in tensors), grad_tensors=filled,
                                retain_graph=call.get("retain_graph"),
                                create_graph=call.get("create_graph", False), inputs=in_edges)
    return True


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements to CPU for every torch function and tensor method call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.autograd.backward, torch.Tensor.backward) and _backward_with_mode(self, func, args,
                                                                                              kwargs):
            return None
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = _fix_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


class CpuRNGStatesTracker:
    """Same interface as megatron's ``CudaRNGStatesTracker``, holding CPU generator states.

    ``fork(name)`` swaps the named state into the default CPU generator, so dropout inside tensor-parallel
    regions draws from a per-TP-rank stream exactly as megatron intends on GPUs.
    """

    def __init__(self, *args, **kwargs):
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict:
        return dict(self.states_)

    def set_states(self, states: dict) -> None:
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


class _FakeEvent:
    """Stand-in for ``torch.cuda.Event`` (timing via perf_counter)."""

    def __init__(self, *args, **kwargs):
        self._t = None

    def record(self, *args, **kwargs):
        self._t = time.perf_counter()

    def synchronize(self):
        return None

    def wait(self, *args, **kwargs):
        return None

    def query(self):
        return True

    def elapsed_time(self, end: _FakeEvent) -> float:
        return (end._t - self._t) * 1000.0


class _FakeStream:
    """Stand-in for ``torch.cuda.Stream``: every stream is the one CPU stream."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self):
        return None

    def wait_stream(self, *args, **kwargs):
        return None

    def wait_event(self, *args, **kwargs):
        return None

    def record_event(self, event=None):
        event = event or _FakeEvent()
        event.record()
        return event


_ORIG_TENSOR_TYPE = torch.Tensor.type
_ORIG_GENERATOR = torch.Generator


def _tensor_type(self, dtype=None, non_blocking=False, **kwargs):
    if dtype is None and not kwargs and self.device.type == "cpu" and self.dtype in _CUDA_TYPE_NAMES:
        return _CUDA_TYPE_NAMES[self.dtype]
    if dtype is None and not kwargs:
        return _ORIG_TENSOR_TYPE(self)
    if isinstance(dtype, str) and dtype.startswith("torch.cuda."):
        dtype = dtype.replace("torch.cuda.", "torch.")
    return _ORIG_TENSOR_TYPE(self, dtype, non_blocking, **kwargs)


class _GeneratorMeta(type):
    """Keeps ``isinstance(g, torch.Generator)`` true for real generators once ``torch.Generator`` is replaced
    (megatron's ``tensor_parallel.random`` and DTensor's dispatcher check it)."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, _ORIG_GENERATOR)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _ORIG_GENERATOR)


class _CpuGenerator(metaclass=_GeneratorMeta):
    """``torch.Generator(device='cuda')`` gives a CPU generator (megatron inference sampling)."""

    def __new__(cls, device=None):
        return _ORIG_GENERATOR(device=_fix_device(device) if device is not None else _CPU)


def _noop():
    """A fresh no-op function object (torch._dynamo refuses one object registered under two names)."""

    def noop(*a, **k):
        return None

    return noop


def _install_cuda_stubs() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.set_device = _noop()
    cuda.synchronize = _noop()
    cuda.manual_seed = _noop()
    cuda.manual_seed_all = _noop()
    cuda.empty_cache = _noop()
    cuda.device_count = lambda: 0
    cuda.Event = _FakeEvent
    cuda.Stream = _FakeStream
    cuda.current_stream = lambda *a, **k: _FakeStream()
    cuda.default_stream = lambda *a, **k: _FakeStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.nvtx.range_push = _noop()
    cuda.nvtx.range_pop = _noop()
    cuda.nvtx.range = lambda *a, **k: contextlib.nullcontext()
    torch.Tensor.type = _tensor_type
    torch.Generator = _CpuGenerator


def _install_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    if not isinstance(mrandom._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker):
        mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def _install_inference_fixes() -> None:
    # communication_utils asserts CUDA tensors before PP send/recv during inference.
    try:
        from megatron.core.inference import communication_utils as cu
    except ImportError:  # pragma: no cover - older megatron
        return
    if hasattr(cu, "_is_cuda"):
        cu._is_cuda = lambda tensor: None


def cpu_compat_active() -> bool:
    """True when this process runs megatron through the CPU compatibility layer."""
    return _STATE["enabled"]


@contextlib.contextmanager
def paused():
    """Within the block, torch calls are not rewritten (CUDA placements would fail): only for code that never
    names a CUDA device and calls no megatron code that does. A no-op when the layer is off or when another
    torch-function mode sits above ours on this thread's stack."""
    from torch.overrides import _get_current_function_mode_stack, _pop_mode_temporarily

    mode = _STATE["mode"]
    stack = _get_current_function_mode_stack()
    if mode is None or not stack or stack[-1] is not mode:
        yield
        return
    with _pop_mode_temporarily():
        yield


def enable_cpu_compat(force: bool = False) -> bool:
    """Switch the layer on when no CUDA device is present (or ``force``); idempotent; returns whether on."""
    with _LOCK:
        if _STATE["enabled"]:
            return True
        if torch.cuda.is_available() and not force:
            return False
        _install_cuda_stubs()
        _install_rng_tracker()
        _install_inference_fixes()
        mode = _CudaToCpuMode()
        mode.__enter__()  # stays on the mode stack for the life of the process (this thread)
        _STATE["mode"] = mode
        _STATE["enabled"] = True
        logger.info(
            "no CUDA device: megatron-core runs on CPU through megatron_align.distributed.cpu_compat "
            "(see docs/cpu_compat.md)"
        )
        return True


def seed_rng_tracker(seed: int, tp_rank: int, ep_rank: int = 0, etp_rank: int = 0) -> None:
    """CPU twin of megatron's ``model_parallel_cuda_manual_seed`` (same seed offsets)."""
    from megatron.core.tensor_parallel import random as mrandom

    _install_rng_tracker()
    tracker = mrandom._CUDA_RNG_STATE_TRACKER
    tracker.reset()
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024 + 100 * ep_rank + etp_rank)
