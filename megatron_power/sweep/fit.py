"""The paper's fit: optimal LR per (batch size, token budget) cell, then a power law.

Pure numpy/scipy, no Megatron. Per cell the optimum is the vertex of a parabola in
(log2 LR, loss) through the grid's best point and its two neighbours (seeds averaged
first), so it can fall between grid points; a best point on the grid's edge has no
vertex inside the grid and the cell is reported but left out of the fit.

Two fits by least squares in log space (beta = batch tokens / reference length):
  paper:     log(eta / beta) = log a + b log T                (c = 1)
  free c:    log eta         = log a + c log beta + b log T
with 95% confidence intervals from the t distribution.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

REFERENCE_SEQ_LENGTH = 4096


@dataclass(frozen=True)
class Cell:
    """One (width, batch size, token budget) cell of a sweep and its optimal LR."""

    hidden_size: int | None
    global_batch_size: int
    seq_length: int
    train_tokens: int
    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # mean over seeds, per LR
    eta_opt: float
    best_loss: float
    on_edge: bool  # the best grid LR is the smallest or largest tried

    @property
    def beta(self) -> float:
        return self.global_batch_size * self.seq_length / REFERENCE_SEQ_LENGTH


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # 95% confidence interval
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass(frozen=True)
class PowerFit:
    a: Estimate
    b: Estimate
    c: Estimate | None  # None: c fixed at 1 (the paper's form)
    cells: int
    rms_log_residual: float

    def predict(self, beta: float, tokens: float) -> float:
        c = 1.0 if self.c is None else self.c.value
        return self.a.value * beta**c * tokens**self.b.value


@dataclass
class FitReport:
    cells: list[Cell]
    paper: PowerFit | None
    free_c: PowerFit | None
    notes: list[str] = field(default_factory=list)

    @property
    def c_is_one(self) -> bool | None:
        return None if self.free_c is None else self.free_c.c.contains(1.0)


def optimum(lrs: Iterable[float], losses: Iterable[float]) -> tuple[float, bool]:
    """(optimal LR, on_edge): the parabola vertex in log2 LR around the grid's best point."""
    lrs = np.asarray(list(lrs), dtype=float)
    losses = np.asarray(list(losses), dtype=float)
    order = np.argsort(lrs)
    lrs, losses = lrs[order], losses[order]
    best = int(np.argmin(losses))
    if best in (0, len(lrs) - 1):
        return float(lrs[best]), True
    x = np.log2(lrs[best - 1 : best + 2])
    y = losses[best - 1 : best + 2]
    curvature, slope, _ = np.polyfit(x, y, 2)
    if curvature <= 0:
        return float(lrs[best]), False
    vertex = float(np.clip(-slope / (2 * curvature), x[0], x[-1]))
    return float(2**vertex), False


def cells_from_results(records: Iterable[dict]) -> list[Cell]:
    """Cells from sweep records (``params`` with lr, global_batch_size, seq_length,
    train_tokens, optional hidden_size and seed; ``valid_loss``); failed runs skipped."""
    grouped: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.get("status") != "ok" or record.get("valid_loss") is None:
            continue
        loss = float(record["valid_loss"])
        if not math.isfinite(loss):
            continue
        p = record.get("params")
        needed = ("lr", "global_batch_size", "seq_length", "train_tokens")
        if not isinstance(p, dict) or any(name not in p for name in needed):
            raise ValueError(
                f"RESULTS: record {record.get('id', '?')!r} has no params with "
                f"{', '.join(needed)}; not a sweep record"
            )
        key = (p.get("hidden_size"), int(p["global_batch_size"]), int(p["seq_length"]),
               int(p["train_tokens"]))  # fmt: skip
        grouped[key][float(p["lr"])].append(loss)
    cells = []
    for key in sorted(grouped, key=lambda k: tuple(-1 if v is None else v for v in k)):
        by_lr = grouped[key]
        lrs = tuple(sorted(by_lr))
        losses = tuple(float(np.mean(by_lr[lr])) for lr in lrs)
        if len(lrs) < 3:
            eta, edge = lrs[int(np.argmin(losses))], True
        else:
            eta, edge = optimum(lrs, losses)
        cells.append(Cell(*key, lrs=lrs, losses=losses, eta_opt=eta,
                          best_loss=min(losses), on_edge=edge))  # fmt: skip
    return cells


def _least_squares(design: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Coefficients, their 95% half-widths, and the RMS residual."""
    from scipy import stats

    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coef
    dof = len(target) - design.shape[1]
    rms = float(np.sqrt(np.mean(residual**2)))
    if dof <= 0:
        return coef, np.full(len(coef), np.inf), rms
    sigma2 = float(residual @ residual) / dof
    covariance = sigma2 * np.linalg.inv(design.T @ design)
    half = stats.t.ppf(0.975, dof) * np.sqrt(np.diag(covariance))
    return coef, half, rms


def fit_power_law(cells: list[Cell], free_batch_exponent: bool) -> PowerFit:
    """Fit eta_opt = a * beta**c * T**b (c = 1 unless ``free_batch_exponent``)."""
    log_t = np.log([cell.train_tokens for cell in cells])
    log_beta = np.log([cell.beta for cell in cells])
    log_eta = np.log([cell.eta_opt for cell in cells])
    ones = np.ones_like(log_t)
    if free_batch_exponent:
        coef, half, rms = _least_squares(np.column_stack([ones, log_beta, log_t]), log_eta)
        (log_a, c, b), (ha, hc, hb) = coef, half
        c_estimate = Estimate(float(c), float(c - hc), float(c + hc))
    else:
        coef, half, rms = _least_squares(np.column_stack([ones, log_t]), log_eta - log_beta)
        (log_a, b), (ha, hb) = coef, half
        c_estimate = None
    return PowerFit(
        a=Estimate(math.exp(log_a), math.exp(log_a - ha), math.exp(log_a + ha)),
        b=Estimate(float(b), float(b - hb), float(b + hb)),
        c=c_estimate,
        cells=len(cells),
        rms_log_residual=rms,
    )


def fit_report(cells: list[Cell]) -> FitReport:
    """Both fits over the cells whose optimum lies inside the LR grid."""
    usable = [cell for cell in cells if not cell.on_edge]
    report = FitReport(cells=cells, paper=None, free_c=None)
    for cell in cells:
        if cell.on_edge:
            report.notes.append(
                f"batch {cell.global_batch_size}, {cell.train_tokens} tokens: best LR "
                f"{cell.eta_opt:g} is on the grid's edge; widen the LR grid (left out of the fit)"
            )
    budgets = len({cell.train_tokens for cell in usable})
    if budgets < 2 or len(usable) < 3:
        report.notes.append(
            f"not identified: {len(usable)} cell(s) with an interior optimum over {budgets} "
            "token budget(s); a and b need at least 3 such cells over 2 or more budgets "
            "(so the fit has a residual and finite confidence intervals): add budgets or "
            "widen the LR grid of the cells on its edge"
        )
        return report
    report.paper = fit_power_law(usable, free_batch_exponent=False)
    if len({cell.global_batch_size for cell in usable}) >= 2 and len(usable) >= 4:
        report.free_c = fit_power_law(usable, free_batch_exponent=True)
    else:
        report.notes.append("one batch size (or < 4 cells): the batch exponent c is not fitted")
    return report


def recommended_flags(report: FitReport) -> list[str]:
    """Power flags for Megatron-LM / pretrain from the fit (c only if the data rejects 1)."""
    if report.paper is None:
        return []
    fit = report.paper
    flags = ["--lr-decay-style", "power"]
    if report.free_c is not None and not report.c_is_one:
        fit = report.free_c
        flags += ["--lr-power-batch-exponent", f"{fit.c.value:.3g}"]
    cap = max(cell.eta_opt for cell in report.cells if not cell.on_edge)
    flags += ["--lr-power-a", f"{fit.a.value:.4g}", "--lr-power-b", f"{fit.b.value:.4g}",
              "--lr", f"{cap:.3g}"]  # fmt: skip
    return flags
