"""CPU shims for Megatron-Core's CUDA-only calls - the test-support entry point.

The shims themselves live in :mod:`megatron_power.megatron.cpu` (``megatron-power
pretrain`` needs them on CPU too, so the package carries the one implementation).
This module adds the one shim only tests need:

* tied embeddings under pipeline parallelism move the weight ``.cuda()`` before the
  first/last-stage all-reduce: :func:`keep_tensors_on_cpu` makes that a no-op.
"""

from __future__ import annotations

import torch

from megatron_power.megatron.cpu import install_cpu_support as install_cpu_shims

__all__ = ["install_cpu_shims", "keep_tensors_on_cpu"]


def keep_tensors_on_cpu() -> None:
    """``Tensor.cuda()`` returns the tensor itself (Megatron's tied-embedding sync calls it)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
