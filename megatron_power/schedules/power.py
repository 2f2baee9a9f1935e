"""The Power learning-rate law (Shen et al. 2024, arXiv 2408.13359, eq. 7-8).

    eta_power(n) = min(eta_max, beta**c * a * n**b)

``n`` is the number of tokens seen so far and ``beta`` the global batch size in force,
counted in the paper's unit: sequences of ``reference_seq_length`` (4096) tokens, that
is ``batch_tokens / 4096``. Counting beta that way keeps ``a`` meaningful at any
sequence length: a run at seq 2048 with 2048 sequences per batch has beta = 1024, the
same as the paper's 1024 x 4096 batch. ``c`` (``batch_exponent``) is 1 in the paper,
which assumes the optimal LR is linear in batch size; a sweep can fit another value.

``held_batch_tokens`` counts beta from one fixed batch instead of the batch in force.
Under a batch-size ramp the batch in force starts small, so the law's LR starts that
much lower; cosine and WSD keep one LR through the ramp. Holding beta at the ramp's
final batch gives Power the same: its LR then depends on tokens only.

The law needs no total-token budget: the LR depends only on tokens seen and the batch.

The paper's setting (a=4, b=-0.51, cap 0.02) at 1024 x 4096 tokens per step: about
3.1e-3 after 1T tokens.

    >>> law = PowerLaw(a=4.0, b=-0.51)
    >>> round(law.lr(tokens=1e12, batch_tokens=1024 * 4096, max_lr=0.02), 4)
    0.0031
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The paper's sequence length; ``beta`` is counted in sequences of this many tokens.
PAPER_REFERENCE_SEQ_LENGTH = 4096

#: The paper's final hyperparameters (section 4): a, b and the cap eta_max.
PAPER_A = 4.0
PAPER_B = -0.51
PAPER_MAX_LR = 0.02


@dataclass(frozen=True)
class PowerLaw:
    """``min(max_lr, beta**batch_exponent * a * tokens**b)`` with beta in reference sequences."""

    a: float = PAPER_A
    b: float = PAPER_B
    reference_seq_length: int = PAPER_REFERENCE_SEQ_LENGTH
    batch_exponent: float = 1.0
    held_batch_tokens: float | None = None  # beta from this batch, not the one in force

    def __post_init__(self) -> None:
        if not self.a > 0:
            raise ValueError(f"lr_power_a: must be > 0, got {self.a}")
        if not self.b < 0:
            raise ValueError(f"lr_power_b: must be < 0 (the LR falls with tokens), got {self.b}")
        if not self.reference_seq_length > 0:
            raise ValueError(
                f"lr_power_reference_seq_length: must be > 0, got {self.reference_seq_length}"
            )
        if not self.batch_exponent > 0:
            raise ValueError(f"lr_power_batch_exponent: must be > 0, got {self.batch_exponent}")
        if self.held_batch_tokens is not None and not self.held_batch_tokens > 0:
            raise ValueError(f"lr_power_batch_size: must be > 0, got {self.held_batch_tokens}")

    def beta(self, batch_tokens: float) -> float:
        """Global batch size in reference sequences (the paper's beta)."""
        return batch_tokens / self.reference_seq_length

    def lr(self, tokens: float, batch_tokens: float, max_lr: float) -> float:
        """The law at ``tokens`` seen with ``batch_tokens`` per step (or the held batch),
        capped at ``max_lr``.

        At ``tokens <= 0`` the law is infinite (b < 0), so the cap applies; ``0**b`` is
        never evaluated.
        """
        if tokens <= 0:
            return max_lr
        if self.held_batch_tokens is None and batch_tokens <= 0:
            raise ValueError(f"batch_tokens: must be > 0 once tokens are seen, got {batch_tokens}")
        return min(max_lr, self._scale(batch_tokens) * math.pow(tokens, self.b))

    def tokens_at_cap(self, batch_tokens: float, max_lr: float) -> float:
        """Tokens after which the law drops below ``max_lr`` (the end of the capped phase)."""
        return math.pow(max_lr / self._scale(batch_tokens), 1.0 / self.b)

    def _scale(self, batch_tokens: float) -> float:
        """``beta**c * a`` with ``batch_tokens`` per step, or with the held batch."""
        held, c = self.held_batch_tokens, self.batch_exponent
        beta = self.beta(batch_tokens if held is None else held)
        return (beta if c == 1.0 else math.pow(beta, c)) * self.a
