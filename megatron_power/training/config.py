"""The resolved configuration of one ``megatron-power pretrain`` run (saved as config.json).

The schedule and muP parts are not spelled out here: they are dictionaries of
:class:`ScheduleSettings` and :class:`MupConfig` knobs, so a knob added there reaches
pretrain's flags, this file and config.json without an edit here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..knobs import Unit, flag_naming, knobs
from ..mup.rules import ModelShape, MupConfig
from ..schedules.settings import ScheduleSettings

#: The embedded default's schedule, in pretrain's units (tokens), applied when ``pretrain``
#: is given no ``--lr`` (as ``schedule`` applies its own). Power a=0.63, b=-0.27, fitted
#: the paper's way on the embedded model and data by bench/fit_default_power.py (WSD
#: sweeps at 0.1M-0.4M tokens, optimal LR per budget, eta_opt / beta = a T^b), cap 0.02,
#: with the default (exponential_e) tail over the last fifth of the run. At 2M tokens
#: (bench/results/default_schedule_2m*.md) this beat the best tuned WSD on both seeds tried
#: and is within 0.3% of the best tuned cosine; the paper's a=4, b=-0.51 do as well with
#: the same tail, 0.6% worse without one. Every other knob keeps its one default.
EMBEDDED_SCHEDULE: dict[str, Any] = {
    "lr_decay_style": "power",
    "max_lr": 0.02,
    "lr_power_a": 0.6308,
    "lr_power_b": -0.2696,
    "lr_warmup_steps": 32_768,
    "wsd_decay_steps_fraction": 0.2,  # --decay-fraction: the tail over the last fifth
}
#: The embedded model's muP, applied when pretrain is given no ``--mup-base-hidden-size``.
EMBEDDED_MUP: dict[str, Any] = {
    "base_hidden_size": 64,
    "embedding_multiplier": 4.0,
    "residual_multiplier": 0.5,
}


FRACTION = "_fraction"
name_the_schedule_flag = flag_naming(ScheduleSettings, pretrain=True)
name_the_mup_flag = flag_naming(MupConfig, pretrain=True)


def fraction_key(name: str) -> str:
    """The schedule entry of a knob given as a share of the run (``--decay-fraction``)."""
    return name + FRACTION


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
    # muP: MupConfig fields; None is standard parameterisation
    mup: dict[str, Any] | None = field(default_factory=lambda: dict(EMBEDDED_MUP))
    # data
    data: str = "markov"  # markov | path to .txt / .jsonl
    data_dir: str | None = None  # default <run_dir>/data; a branch's: its trunk's, relative
    vocab_size: int = 128  # markov vocabulary / SentencePiece model size
    markov_seed: int = 1234
    markov_concentration: float = 0.05
    tokenizer_model: str | None = None
    # schedule: ScheduleSettings fields, counts in tokens; the run's length and sequence
    # length come from train_tokens and seq_length
    schedule: dict[str, Any] = field(default_factory=lambda: dict(EMBEDDED_SCHEDULE))
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
        # A share of the run becomes tokens once, in whole steps (as Megatron-LM's
        # --lr-wsd-decay-fraction with the plugin), so config.json and resumes agree.
        self.schedule = dict(self.schedule)
        for name in [key for key in self.schedule if key.endswith(FRACTION)]:
            fraction = self.schedule.pop(name)
            if not (isinstance(fraction, int | float) and 0 <= fraction <= 1):
                raise ValueError(f"{name}: must be a fraction in [0, 1], got {fraction!r}")
            steps = round(fraction * self.train_iters) if self.tokens_per_step > 0 else 0
            self.schedule[name.removesuffix(FRACTION)] = steps * self.tokens_per_step

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def train_iters(self) -> int:
        return max(1, self.train_tokens // self.tokens_per_step)

    def schedule_settings(self) -> ScheduleSettings:
        """The run's schedule in Megatron's units (samples), from the config's tokens."""
        values: dict[str, Any] = {}
        for item, meta in knobs(ScheduleSettings):
            if item.name not in self.schedule:
                continue
            value = self.schedule[item.name]
            if meta.unit is Unit.SAMPLES and value is not None:
                if meta.many:
                    value = tuple(tokens // self.seq_length for tokens in value)
                else:
                    value = value // self.seq_length
            values[item.name] = value
        unknown = set(self.schedule) - {item.name for item, _ in knobs(ScheduleSettings)}
        if unknown:
            raise ValueError(f"schedule.{sorted(unknown)[0]}: not a schedule setting")
        values["seq_length"] = self.seq_length
        values["lr_decay_steps"] = self.train_iters * self.global_batch_size
        return ScheduleSettings(**values)

    def mup_config(self) -> MupConfig | None:
        return None if self.mup is None else MupConfig.from_dict(self.mup)

    def validate(self) -> None:
        """Every check that can fail, before any process starts; errors name pretrain's
        flags."""
        positive = {
            "--hidden-size": self.hidden_size, "--num-layers": self.num_layers,
            "--head-dim": self.head_dim, "--seq-length": self.seq_length,
            "--train-tokens": self.train_tokens, "--global-batch-size": self.global_batch_size,
            "--nproc": self.nproc, "--tp": self.tensor_model_parallel_size,
            "--ep": self.expert_model_parallel_size, "--vocab-size": self.vocab_size,
        }  # fmt: skip
        for flag, value in positive.items():
            if value < 1:
                raise ValueError(f"{flag}: must be >= 1, got {value}")
        if self.hidden_size % self.head_dim:
            raise ValueError(f"--head-dim: {self.head_dim} does not divide --hidden-size")
        model_parallel = self.tensor_model_parallel_size * self.expert_model_parallel_size
        if self.nproc % model_parallel:
            raise ValueError(f"--nproc: {self.nproc} is not a multiple of --tp x --ep")
        if self.expert_model_parallel_size > 1 and self.model != "moe":
            raise ValueError("--ep: expert parallelism needs --model moe")
        if self.model == "moe" and self.num_experts % self.expert_model_parallel_size:
            raise ValueError("--num-experts: not divisible by --ep")
        if self.train_tokens < self.tokens_per_step:
            raise ValueError("--train-tokens: shorter than one step (global batch x seq length)")
        if self.data != "markov" and not Path(self.data).is_file():
            raise ValueError(f"--data: no such file: {self.data}")
        try:
            self.schedule_settings()
        except ValueError as error:
            raise ValueError(name_the_schedule_flag(str(error))) from None
        try:
            mup = self.mup_config()
            if mup is not None:
                mup.resolve(ModelShape(self.hidden_size, self.num_layers, self.head_dim))
        except ValueError as error:
            raise ValueError(name_the_mup_flag(str(error))) from None

    def path(self, recorded: str) -> Path:
        """A path recorded in the run (data directory, tokenizer) resolved against the run
        directory, never the working directory: an absolute one stays as it is."""
        return Path(self.run_dir) / recorded

    def save(self, path: Path) -> None:
        """config.json holds no path to its own run directory: wherever the directory is
        copied or moved, it is the run directory (see :meth:`load`)."""
        data = asdict(self)
        del data["run_dir"]
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        """The run whose config.json is ``path``; its run directory is where it lies."""
        data = json.loads(path.read_text())
        data["run_dir"] = str(Path(path).parent)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{path}: field {unknown[0]!r} is not a pretrain setting (a config.json "
                "from another megatron-power version?)"
            )
        return cls(**data)
