"""The resolved configuration of one ``megatron-power pretrain`` run (saved as config.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: Power settings of the embedded default, fitted the paper's way on it by
#: bench/fit_default_power.py (WSD sweeps at 0.1M-0.4M tokens, optimal LR per budget,
#: eta_opt / beta = a T^b): a=0.63, b=-0.27, cap --lr 0.02, with an exponential_e tail over
#: the last fifth of the run. At the default 2M tokens (bench/results/default_schedule_2m*.md)
#: this beat the best tuned WSD on both seeds tried and is within 0.3% of the best tuned
#: cosine; the paper's a=4, b=-0.51 (fitted on billions of tokens) do as well with the same
#: tail, and 0.6% worse without one.
DEFAULT_POWER_A = 0.6308
DEFAULT_POWER_B = -0.2696
#: The Power decay tail's share of the run (exponential_e to min_lr), as PowerLM's final
#: phase; without it the LR ends high and the loss with it.
DEFAULT_DECAY_FRACTION = 0.2


@dataclass
class PretrainConfig:
    """Everything a run needs; counts are tokens unless named otherwise."""

    run_dir: str = "runs/default"
    # model
    model: str = "dense"  # dense | moe
    hidden_size: int = 128
    num_layers: int = 4
    head_dim: int = 32
    ffn_hidden_size: int | None = None  # default 2 x hidden (SwiGLU)
    num_query_groups: int | None = None  # grouped-query attention; default = heads
    rotary_base: int = 10_000
    norm_epsilon: float = 1e-5
    share_embeddings: bool = False  # tie the readout to the input embedding
    padded_vocab_size: int | None = None  # model vocabulary when larger than the data's
    num_experts: int = 8
    moe_router_topk: int = 2
    moe_ffn_hidden_size: int | None = None  # default hidden
    seq_length: int = 128
    init_method_std: float = 0.02
    # muP
    mup: bool = True
    mup_base_hidden_size: int = 64
    mup_embedding_multiplier: float = 4.0
    mup_residual_multiplier: float = 0.5
    mup_attention_multiplier: float | None = None  # softmax scale; default muP's 1/head_dim
    mup_logits_scaling: float | None = None  # logits divisor; default the width ratio
    # data
    data: str = "markov"  # markov | path to .txt / .jsonl
    data_dir: str | None = None  # default <run_dir>/data; branches share their trunk's
    vocab_size: int = 128  # markov vocabulary / SentencePiece model size
    markov_seed: int = 1234
    markov_concentration: float = 0.05
    tokenizer_model: str | None = None
    # schedule
    lr: float = 0.02
    min_lr: float = 0.0
    lr_decay_style: str = "power"
    lr_power_a: float = DEFAULT_POWER_A
    lr_power_b: float = DEFAULT_POWER_B
    lr_power_batch_exponent: float = 1.0  # c in beta**c; 1 is the paper's linear scaling
    warmup_tokens: int = 32_768
    decay_tokens: int | None = None  # Power tail / WSD decay; None = DEFAULT_DECAY_FRACTION
    # of the run (power, WSD), 0 = no tail
    decay_shape: str = "exponential_e"
    wsd_cycle_tokens: list[int] | None = None
    branch_decay_start_tokens: int | None = None
    branch_decay_tokens: int | None = None
    # training
    train_tokens: int = 2_000_000
    global_batch_size: int = 16  # sequences
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    seed: int = 0
    # parallelism
    nproc: int = 1
    tensor_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    device: str = "auto"  # auto | cpu | cuda
    # bookkeeping
    exit_interval: int | None = None  # stop (with a checkpoint) after this many iterations
    checkpoint_interval_tokens: int = 500_000
    eval_tokens: int = 16_384
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decay_tokens is None:  # resolved once, saved in config.json: resumes agree
            share = DEFAULT_DECAY_FRACTION if self.lr_decay_style in ("power", "WSD") else 0.0
            steps = round(self.train_tokens * share / self.tokens_per_step)
            self.decay_tokens = steps * self.tokens_per_step

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def train_iters(self) -> int:
        return max(1, self.train_tokens // self.tokens_per_step)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
