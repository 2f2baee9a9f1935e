import os
import warnings
from pathlib import Path

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


@pytest.fixture(scope="session")
def megatron_lm_tree(tmp_path_factory) -> Path:
    """A real Megatron-LM tree: MEGATRON_LM_DIR if set, else the newest release archive of
    this Python line from ../shared/megatron-lm/, unpacked (a missing archive fails)."""
    from tests.support.megatron_lm_trees import ARCHIVES, archives_for_this_line, unpack

    if os.environ.get("MEGATRON_LM_DIR"):
        return Path(os.environ["MEGATRON_LM_DIR"])
    names = [n for n in archives_for_this_line() if "core_v" in n]
    assert names, f"no Megatron-LM release archive for this Python line in {ARCHIVES}"
    return unpack(names[-1], tmp_path_factory.mktemp("megatron-lm"))
