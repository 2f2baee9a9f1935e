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

from ..files import atomic_write_text
from ..knobs import Range, Unit, flag_naming, knobs
from ..mup.rules import ModelShape, MupConfig
from ..schedules.batch import parse_step_batch_schedule, step_batch_size_at
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


SETTING = "megatron_power_setting"


@dataclass(frozen=True)
class Setting:
    """A pretrain field's flag (None: set by import-hf or config.json only) and its check."""

    flag: str | None = None
    check: Range | None = None
    choices: tuple[str, ...] | None = None


def setting(default: Any, flag: str | None = None, check: Range | None = None,
            choices: tuple[str, ...] | None = None) -> Any:  # fmt: skip
    """A PretrainConfig field with the flag that sets it and the values it allows."""
    metadata = {SETTING: Setting(flag, check, choices)}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def settings_of(cls: Any = None) -> dict[str, Setting]:
    """Each PretrainConfig field's :class:`Setting` (fields without one: ``Setting()``)."""
    return {f.name: f.metadata.get(SETTING, Setting()) for f in fields(cls or PretrainConfig)}


_POSITIVE_COUNT = Range(low=1, integer=True)  # None, where allowed, skips the check


@dataclass
class PretrainConfig:
    """Everything a run needs; counts are tokens unless named otherwise."""

    run_dir: str = "runs/default"
    # model
    model: str = setting("dense", "--model", choices=("dense", "moe"))
    hidden_size: int = setting(128, "--hidden-size", _POSITIVE_COUNT)
    num_layers: int = setting(4, "--num-layers", _POSITIVE_COUNT)
    head_dim: int = setting(32, "--head-dim", _POSITIVE_COUNT)
    ffn_hidden_size: int | None = setting(None, None, _POSITIVE_COUNT)  # default 2 x hidden
    num_query_groups: int | None = setting(None, None, _POSITIVE_COUNT)  # GQA; default heads
    rotary_base: float = setting(10_000, None, Range(low=0, low_open=True))
    #: linear RoPE scaling (transformers' rope_type "linear"): positions / factor
    seq_len_interpolation_factor: float | None = setting(None, None, Range(low=0, low_open=True))
    norm_epsilon: float = setting(1e-5, None, Range(low=0, low_open=True))
    share_embeddings: bool = False  # tie the readout to the input embedding
    #: an imported model's vocabulary (its rows; default: the data's vocabulary)
    model_vocab_size: int | None = setting(None, None, _POSITIVE_COUNT)
    #: Megatron's padding: rows up to a multiple of this x --tp, masked out of every loss
    make_vocab_size_divisible_by: int = setting(1, None, _POSITIVE_COUNT)
    num_experts: int = setting(8, "--num-experts", _POSITIVE_COUNT)
    moe_router_topk: int = setting(2, None, _POSITIVE_COUNT)
    moe_ffn_hidden_size: int | None = setting(None, None, _POSITIVE_COUNT)  # default hidden
    moe_aux_loss_coeff: float = setting(0.0, None, Range(low=0))  # Megatron's load balancing
    attention_dropout: float = setting(0.0, None, Range(low=0, high=1, high_open=True))
    seq_length: int = setting(128, "--seq-length", _POSITIVE_COUNT)
    init_method_std: float = setting(0.02, None, Range(low=0, low_open=True))
    # muP: MupConfig fields; None is standard parameterisation
    mup: dict[str, Any] | None = field(default_factory=lambda: dict(EMBEDDED_MUP))
    # data
    data: str = setting("markov", "--data")  # markov | path to .txt / .jsonl
    data_dir: str | None = None  # default <run_dir>/data; a branch's: its trunk's, relative
    vocab_size: int = setting(128, "--vocab-size", Range(low=2, integer=True))
    markov_seed: int = setting(1234, None, Range(low=0, integer=True))
    markov_concentration: float = setting(0.05, None, Range(low=0, low_open=True))
    tokenizer_model: str | None = setting(None, "--tokenizer-model")
    # schedule: ScheduleSettings fields, counts in tokens; the run's length and sequence
    # length come from train_tokens and seq_length
    schedule: dict[str, Any] = field(default_factory=lambda: dict(EMBEDDED_SCHEDULE))
    # training
    train_tokens: int = setting(2_000_000, "--train-tokens", _POSITIVE_COUNT)
    global_batch_size: int = setting(16, "--global-batch-size", _POSITIVE_COUNT)  # sequences
    #: Megatron-LM 0.18's "THRESHOLD:BATCH ..." (thresholds in tokens); global_batch_size is
    #: then its last batch
    step_batch_size_schedule: str | None = setting(None, "--step-batch-size-schedule")
    weight_decay: float = setting(0.1, None, Range(low=0))
    adam_beta2: float = setting(0.95, None, Range(low=0, high=1, high_open=True))
    clip_grad: float = setting(1.0, None, Range(low=0, low_open=True))
    seed: int = setting(0, "--seed", Range(low=0, high=2**32 - 1, integer=True))
    # parallelism
    nproc: int = setting(1, "--nproc", _POSITIVE_COUNT)
    tensor_model_parallel_size: int = setting(1, "--tp", _POSITIVE_COUNT)
    expert_model_parallel_size: int = setting(1, "--ep", _POSITIVE_COUNT)
    device: str = setting("auto", "--device", choices=("auto", "cpu", "cuda"))
    # bookkeeping
    #: stop (with a checkpoint) after this many iterations; per invocation, not per run
    exit_interval: int | None = setting(None, "--exit-interval", _POSITIVE_COUNT)
    checkpoint_interval_tokens: int = setting(500_000, None, _POSITIVE_COUNT)
    eval_tokens: int = setting(16_384, None, _POSITIVE_COUNT)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A share of the run becomes tokens once, in whole steps (as Megatron-LM's
        # --lr-wsd-decay-fraction with the plugin), so config.json and resumes agree.
        self.schedule = dict(self.schedule)
        for name in [key for key in self.schedule if key.endswith(FRACTION)]:
            fraction = self.schedule.pop(name)
            if not (isinstance(fraction, int | float) and 0 <= fraction <= 1):
                stem = name.removesuffix(FRACTION)
                known = {item.name: meta for item, meta in knobs(ScheduleSettings)}
                flag = known[stem].pretrain_fraction_flag if stem in known else None
                raise ValueError(f"{flag or name}: must be a fraction in [0, 1], got {fraction!r}")
            steps = round(fraction * self.train_iters) if self.tokens_per_step > 0 else 0
            self.schedule[name.removesuffix(FRACTION)] = self.tokens_after(steps)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def train_iters(self) -> int:
        """Whole steps within --train-tokens (at least one)."""
        if self.step_batch_size_schedule is None:
            return max(1, self.train_tokens // self.tokens_per_step)
        samples, iterations = self.train_tokens // self.seq_length, 0
        consumed = 0
        while iterations == 0 or consumed + self.batch_at(consumed) <= samples:
            consumed += self.batch_at(consumed)
            iterations += 1
        return iterations

    def batch_at(self, samples: int) -> int:
        """The global batch of the step that starts after ``samples`` sequences."""
        if self.step_batch_size_schedule is None:
            return self.global_batch_size
        schedule = parse_step_batch_schedule(self.step_batch_size_schedule, self.seq_length)
        return step_batch_size_at(samples, schedule)

    def batches(self, iterations: int) -> list[int]:
        """The global batch of each of the first ``iterations`` steps."""
        sizes, consumed = [], 0
        for _ in range(iterations):
            sizes.append(self.batch_at(consumed))
            consumed += sizes[-1]
        return sizes

    def tokens_after(self, iterations: int) -> int:
        if self.step_batch_size_schedule is None:
            return iterations * self.tokens_per_step
        return sum(self.batches(iterations)) * self.seq_length

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
        values["lr_decay_steps"] = self.tokens_after(self.train_iters) // self.seq_length
        return ScheduleSettings(**values)

    def mup_config(self) -> MupConfig | None:
        return None if self.mup is None else MupConfig.from_dict(self.mup)

    def validate(self, inputs_needed: bool = True) -> None:
        """Every check that can fail, before any process starts; errors name pretrain's
        flags. ``inputs_needed`` False: a resume, whose data is already prepared."""
        for name, meta in settings_of(type(self)).items():
            value = getattr(self, name)
            where = meta.flag or f"config.json {name}"
            if meta.check is not None and value is not None:
                meta.check.check(where, value)
            if meta.choices is not None and value not in meta.choices:
                raise ValueError(
                    f"{where}: must be one of {', '.join(meta.choices)}, got {value!r}"
                )
        if self.hidden_size % self.head_dim:
            raise ValueError(f"--head-dim: {self.head_dim} does not divide --hidden-size")
        model_parallel = self.tensor_model_parallel_size * self.expert_model_parallel_size
        if self.nproc % model_parallel:
            raise ValueError(f"--nproc: {self.nproc} is not a multiple of --tp x --ep")
        heads = self.hidden_size // self.head_dim
        for what, count in (("attention heads", heads),
                            ("query groups", self.num_query_groups or heads)):  # fmt: skip
            if count % self.tensor_model_parallel_size:
                raise ValueError(
                    f"--tp: {self.tensor_model_parallel_size} does not divide the {count} "
                    f"{what} (--hidden-size / --head-dim)"
                )
        if (self.model == "moe" and self.tensor_model_parallel_size > 1
                and self.seq_length % self.tensor_model_parallel_size):  # fmt: skip
            raise ValueError(
                f"--seq-length: {self.seq_length} is not divisible by --tp "
                f"{self.tensor_model_parallel_size} (MoE with tensor parallelism runs sequence "
                "parallel, which splits the sequence)"
            )
        if self.expert_model_parallel_size > 1 and self.model != "moe":
            raise ValueError("--ep: expert parallelism needs --model moe")
        if self.model == "moe" and self.num_experts % self.expert_model_parallel_size:
            raise ValueError("--num-experts: not divisible by --ep")
        if self.step_batch_size_schedule is not None:
            schedule = parse_step_batch_schedule(self.step_batch_size_schedule, self.seq_length)
            if schedule[-1][1] != self.global_batch_size:
                raise ValueError(
                    f"--step-batch-size-schedule: its last batch {schedule[-1][1]} is not "
                    f"global_batch_size {self.global_batch_size}"
                )
        if self.train_tokens < self.batch_at(0) * self.seq_length:
            raise ValueError("--train-tokens: shorter than one step (global batch x seq length)")
        if inputs_needed and self.data != "markov" and not Path(self.data).is_file():
            raise ValueError(f"--data: no such file: {self.data}")
        if inputs_needed and self.tokenizer_model and not self.path(self.tokenizer_model).is_file():
            raise ValueError(f"--tokenizer-model: no such file: {self.tokenizer_model}")
        if inputs_needed and self.tokenizer_model and self.data != "markov":
            from ..data.text import load_tokenizer

            load_tokenizer(self.path(self.tokenizer_model))  # a file it cannot read: one line
        cycles = self.schedule.get("lr_wsd_cycle_steps") or []
        end = self.tokens_after(self.train_iters)  # whole steps
        if cycles and max(cycles) > end:
            steps = f"{self.train_iters} steps"
            if self.step_batch_size_schedule is None:
                steps += f" of {self.tokens_per_step} tokens"
            raise ValueError(
                f"--wsd-cycle-tokens: {max(cycles)} is past the end of the run ({steps} = "
                f"{end}); it would never be reached"
            )
        try:
            self.schedule_settings()
        except ValueError as error:
            raise ValueError(name_the_schedule_flag(str(error))) from None
        try:
            mup = self.mup_config()
            if mup is not None:
                shape = ModelShape(
                    self.hidden_size,
                    self.num_layers,
                    self.head_dim,
                    tied_readout=self.share_embeddings,
                )
                mup.resolve(shape)
        except ValueError as error:
            raise ValueError(name_the_mup_flag(str(error))) from None

    def path(self, recorded: str) -> Path:
        """A path recorded in the run (data directory, tokenizer) resolved against the run
        directory, never the working directory: an absolute one stays as it is."""
        return Path(self.run_dir) / recorded

    def save(self, path: Path) -> None:
        """config.json holds no path to its own run directory: wherever the directory is
        copied or moved, it is the run directory (see :meth:`load`)."""
        atomic_write_text(path, self.to_json())

    def to_json(self) -> str:
        data = asdict(self)
        del data["run_dir"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        """The run whose config.json is ``path``; its run directory is where it lies."""
        try:
            data = json.loads(Path(path).read_text())
        except ValueError as error:
            raise ValueError(f"{path}: not a readable config.json ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a readable config.json (not an object)")
        data["run_dir"] = str(Path(path).parent)
        if "padded_vocab_size" in data:  # its name before 0.2: the imported vocabulary
            data["model_vocab_size"] = data.pop("padded_vocab_size")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{path}: field {unknown[0]!r} is not a pretrain setting (a config.json "
                "from another megatron-power version?)"
            )
        return cls(**data)
