"""muP under tensor, sequence, expert and pipeline parallelism equals the single-rank model.

Real multi-process gloo runs (tests/support/parallel.py): the same full weights are loaded
into each layout's shards; loss and every reassembled gradient must match the one-rank run.
"""

import pytest
import torch

from megatron_power.mup import ParamRole
from tests.support.distributed import run_ranks
from tests.support.parallel import pipeline_by_hand, tensor_or_expert_parallel


def assert_same_run(parallel, reference):
    assert parallel["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert parallel["grads"].keys() == reference["grads"].keys()
    for name, grad in reference["grads"].items():
        error = (parallel["grads"][name] - grad).norm() / grad.norm().clamp_min(1e-30)
        assert error.item() < 1e-5, f"{name}: relative gradient error {error.item():.2e}"


def test_tensor_parallel_equals_one_rank():
    # Sequence parallelism needs TE or apex norms (Megatron's torch norm refuses it), so
    # it is not exercised on CPU; muP's multipliers are elementwise and do not see it.
    (reference,) = run_ranks(tensor_or_expert_parallel, 1, 1, 1, False, False, None)
    ranks = run_ranks(tensor_or_expert_parallel, 2, 2, 1, False, False, reference["state"])
    for result in ranks:
        assert_same_run(result, reference)


def test_expert_parallel_equals_one_rank():
    (reference,) = run_ranks(tensor_or_expert_parallel, 1, 1, 1, True, False, None)
    assert any("local_experts.3." in name for name in reference["grads"])
    ranks = run_ranks(tensor_or_expert_parallel, 2, 1, 2, True, False, reference["state"])
    for result in ranks:
        assert_same_run(result, reference)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_pipeline_stages_chained_by_hand_equal_one_stage(tied):
    (reference,) = run_ranks(pipeline_by_hand, 1, None, tied)
    first, last = run_ranks(pipeline_by_hand, 2, reference["state"], tied)
    assert_same_run(first, reference)
    if tied:
        # The last stage's copy of the tied embedding is treated like the first's.
        assert first["roles"]["output_layer.weight@last"] is ParamRole.EMBEDDING
        assert first["roles"]["embedding.word_embeddings.weight"] is ParamRole.EMBEDDING
    else:
        assert first["roles"]["output_layer.weight@last"] is ParamRole.READOUT
    assert torch.equal(first["grads"]["decoder.layers.3.mlp.linear_fc2.weight"],
                       last["grads"]["decoder.layers.3.mlp.linear_fc2.weight"])  # fmt: skip
