import warnings

import pytest

# Megatron-Core warns at import that Transformer Engine and apex are absent; expected here.
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")


@pytest.fixture(scope="session")
def single_process_group():
    """A real one-rank gloo process group, for Megatron code that asks for the world."""
    import torch.distributed as dist

    from tests.support.distributed import init_single_process_gloo

    init_single_process_gloo()
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
