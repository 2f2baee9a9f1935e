"""CPU shims for Megatron-Core's CUDA-only calls - test support only, never shipped.

Megatron-Core builds and runs GPT and MoE models on CPU over gloo once three CUDA-only
spots are patched (see ../shared/REFERENCE.md section 4):

* ``torch.cuda.current_device()`` is asked for a device: answer the CPU;
* the model-parallel RNG tracker wants CUDA RNG state: re-initialise it in its
  inference mode, which keeps CPU generators;
* megatron-core 0.16's MoE calls TE's ``te_general_gemm`` when it is importable: null it
  (with ``add_bias_linear=False``);
* tied embeddings under pipeline parallelism move the weight ``.cuda()`` before the
  first/last-stage all-reduce: :func:`keep_tensors_on_cpu` makes that a no-op.
"""

from __future__ import annotations

import torch


def install_cpu_shims() -> None:
    """Patch the CUDA-only calls; idempotent."""
    torch.cuda.current_device = lambda: torch.device("cpu")
    from megatron.core import tensor_parallel

    tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    try:
        from megatron.core.transformer.moe import moe_utils
    except ImportError:  # pragma: no cover - every supported line has it
        return
    # 0.16.1 names it only when TE imports; the router's gating looks it up either way.
    moe_utils.te_general_gemm = None


def keep_tensors_on_cpu() -> None:
    """``Tensor.cuda()`` returns the tensor itself (Megatron's tied-embedding sync calls it)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
