"""CPU shims for Megatron-Core's and Megatron-LM's CUDA-only calls - the test-support module.

The Megatron-Core shims live in :mod:`megatron_power.megatron.cpu` (``megatron-power
pretrain`` needs them on CPU too, so the package carries the one implementation).
This module adds what only tests need:

* tied embeddings under pipeline parallelism move the weight ``.cuda()`` before the
  first/last-stage all-reduce: :func:`keep_tensors_on_cpu` makes that a no-op;
* a real Megatron-LM ``pretrain_gpt.py`` on CPU with gloo (REFERENCE.md section 7):
  :func:`install_megatron_lm_cpu_shims`, called before the tree's training code runs.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
from torch.overrides import TorchFunctionMode

from megatron_power.megatron.cpu import install_cpu_support as install_cpu_shims

__all__ = ["install_cpu_shims", "install_megatron_lm_cpu_shims", "keep_tensors_on_cpu"]


def keep_tensors_on_cpu() -> None:
    """``Tensor.cuda()`` returns the tensor itself (Megatron's tied-embedding sync calls it)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


def _is_cuda(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class CudaToCpu(TorchFunctionMode):
    """Every tensor Megatron asks for on ``cuda`` (factory ``device=``, ``.to('cuda')``,
    ``.cuda()``, pinned memory) is made on the CPU instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        kwargs.pop("pin_memory", None)
        if func in (torch.Tensor.cuda, torch.Tensor.pin_memory):
            return args[0]
        if func is torch.Tensor.to:
            args = tuple("cpu" if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)


_CPU_TYPE_TO_CUDA = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def install_megatron_lm_cpu_shims() -> None:
    """Let a Megatron-LM tree's ``pretrain()`` train on CPU over gloo, one process per rank.

    Answers: ``torch.cuda`` availability, devices, streams, synchronisation and memory
    queries; tensors created on ``cuda``; ``Tensor.type()`` (clip_grads asserts a cuda
    type); Megatron's JIT fuser (torch.compile) off, so call this before importing
    megatron; the model-parallel RNG tracker's CUDA states (kept on the CPU generator);
    0.16's fused kernel loader and its MoE router's
    Transformer Engine gemm.
    """
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: torch.device("cpu")
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.max_memory_reserved = lambda *a, **k: 0
    cuda.reset_peak_memory_stats = lambda *a, **k: None
    cuda.get_device_capability = lambda *a, **k: (9, 0)
    cuda.get_device_name = lambda *a, **k: "cpu"
    cuda.get_device_properties = lambda *a, **k: SimpleNamespace(
        name="cpu", major=9, minor=0, total_memory=0, multi_processor_count=1
    )
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None  # torch.manual_seed calls it
    cuda.nvtx.range_push = lambda *a, **k: None
    cuda.nvtx.range_pop = lambda *a, **k: None
    cuda.is_current_stream_capturing = lambda: False

    class _Stream:
        def __init__(self, *args, **kwargs):
            pass

        def wait_stream(self, *args, **kwargs):
            pass

        def synchronize(self):
            pass

        def is_capturing(self):
            return False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class _Event:
        def __init__(self, *args, **kwargs):
            pass

        def record(self, *args, **kwargs):
            pass

        def synchronize(self):
            pass

        def wait(self, *args, **kwargs):
            pass

        def elapsed_time(self, other):
            return 0.0

    cuda.Stream = _Stream
    cuda.Event = _Event
    cuda.current_stream = lambda *a, **k: _Stream()
    cuda.default_stream = lambda *a, **k: _Stream()
    cuda.stream = lambda *a, **k: _Stream()
    if hasattr(torch, "accelerator"):
        torch.accelerator.current_stream = lambda *a, **k: _Stream()

    original_type = torch.Tensor.type

    def tensor_type(self, *args, **kwargs):
        if args or kwargs:
            return original_type(self, *args, **kwargs)
        name = original_type(self)
        return _CPU_TYPE_TO_CUDA.get(name, name)

    torch.Tensor.type = tensor_type
    CudaToCpu().__enter__()  # for the whole process

    def no_compile(function=None, **options):  # Megatron's JIT fuser is torch.compile
        return function if function is not None else (lambda f: f)

    torch.compile = no_compile
    _answer_megatron_lm_cuda_calls()


def _answer_megatron_lm_cuda_calls() -> None:
    """The tree's own CUDA-only steps: its RNG tracker keeps CPU generator states (so
    checkpoints save and restore them), 0.16's fused kernel loader is skipped."""
    from megatron.core.tensor_parallel import random as tp_random
    from megatron.core.transformer.moe import moe_utils

    moe_utils.te_general_gemm = None  # 0.16's router looks it up; set only with TE

    tp_random._get_cuda_rng_state = lambda *a, clone=False, **k: torch.get_rng_state()
    tp_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    try:
        import megatron.legacy.fused_kernels as fused_kernels

        fused_kernels.load = lambda *a, **k: None
    except ImportError:
        pass
