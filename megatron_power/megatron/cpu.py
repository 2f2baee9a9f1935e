"""Run Megatron-Core on CPU (gloo): the few CUDA-only calls, answered for the CPU.

``megatron-power pretrain`` trains on a laptop and the test suite runs everywhere, so the
package carries the shims (REFERENCE.md section 4) in this one module; tests use it via
tests/support/cpu_shims.py. Never installed when CUDA is in use.

* ``torch.cuda.current_device()`` is asked for a device: answer the CPU;
* the model-parallel RNG tracker wants CUDA RNG state: re-initialise it in its inference
  mode, which keeps CPU generators;
* megatron-core 0.16's MoE router looks up Transformer Engine's ``te_general_gemm``,
  defined only when TE imports: set it to None (with ``add_bias_linear=False``).
"""

from __future__ import annotations

import torch


def install_cpu_support() -> None:
    """Patch the CUDA-only calls; idempotent. Call after initialize_model_parallel."""
    if torch.cuda.is_available():
        raise RuntimeError("install_cpu_support: CUDA is available; run on the GPU instead")
    torch.cuda.current_device = lambda: torch.device("cpu")
    from megatron.core import tensor_parallel

    tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    try:
        from megatron.core.transformer.moe import moe_utils
    except ImportError:  # pragma: no cover - every supported line has it
        return
    moe_utils.te_general_gemm = None
