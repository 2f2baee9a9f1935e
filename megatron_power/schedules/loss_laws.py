"""Loss as a function of the LR schedule: the multi-power law and the annealing law.

Both predict the whole loss curve of a schedule from its LR sequence, once fitted to a few
runs of the same model and data:

* **multi-power law** (Luo et al. 2025, arXiv 2503.12811)::

      L(t) = L0 + A (S1(t) + S_W)^-alpha - LD(t)
      LD(t) = B sum_k (eta_{k-1} - eta_k) G(eta_k^-gamma S_k(t)),  G(x) = 1 - (C x + 1)^-beta

  with S1 the sum of the LRs after warmup, S_W the warmup's, S_k(t) the sum from step k;
* **annealing law** (Tissue et al. 2024, arXiv 2408.11029)::

      L(t) = L0 + A S1(t)^-alpha - C S2(t),  S2 = sum_i m_i,
      m_i = lambda m_{i-1} + (eta_{i-1} - eta_i)

  written here as the same sum over LR drops, each drop's gain saturating as
  ``1 - lambda^(steps since)`` (``B = C / (1 - lambda)``).

Three generalisations, each reducing to the paper's law in the paper's setting (one peak
LR, one batch size): the LR areas (S1, S_k) sum ``eta (batch / B_ref)^mu``, an update's
*progress* (``mu`` = 1: the same per token at any batch, below the critical batch; 0: the
same per update, far above it); the drop terms use a *temperature* ``eta (B_ref /
batch)^nu`` (SGD noise scales with LR / batch); and the constant-LR plateau sits ``B x
temperature`` above ``L0`` (the loss an infinitely slow anneal reaches), so runs at
different peak LRs or batches share one ``L0``. ``mu`` and ``nu`` are fitted when the runs
have two batch sizes or more, else 0 (the batch cannot be seen). With a single peak and
batch, the paper's L0 is this L0 + B eta_peak.

Pure: numpy and scipy only (scipy.optimize.least_squares fits the parameters).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: LR drops kept exact; a longer run's drops are merged into this many blocks.
MAX_DROP_TERMS = 4000
#: A final validation loss weighs as much as this many windows of the curve, squared.
FINAL_WEIGHT = 3.0
#: By default a fit reads each run past its first half: the early transient is no power
#: law. bench/predict.py compares 0.1, 0.3 and 0.5; predicting each fitted schedule from
#: the others (no held-out run involved) favours 0.5.
FIRST_FRACTION = 0.5


@dataclass(frozen=True)
class Trajectory:
    """What a run does: the LR and the global batch of each update, in order."""

    lrs: np.ndarray
    batches: np.ndarray

    def __post_init__(self) -> None:
        lrs = np.asarray(self.lrs, dtype=float)
        batches = np.asarray(self.batches, dtype=float)
        if lrs.ndim != 1 or lrs.shape != batches.shape or len(lrs) < 2:
            raise ValueError("trajectory: needs one LR and one batch per update, >= 2 updates")
        if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
            raise ValueError("trajectory: LRs must be finite and >= 0")
        if np.any(batches < 1):
            raise ValueError("trajectory: batches must be >= 1")
        object.__setattr__(self, "lrs", lrs)
        object.__setattr__(self, "batches", batches)

    @property
    def steps(self) -> int:
        return len(self.lrs)

    @property
    def warmup_steps(self) -> int:
        """Updates up to and including the first peak (the LR stops rising there)."""
        lrs = self.lrs
        rising = (lrs[1:] > lrs[:-1]) | (lrs[:-1] <= 0)
        stops = np.flatnonzero(~rising)
        return int(stops[0]) + 1 if len(stops) else self.steps

    @property
    def peak_lr(self) -> float:
        return float(self.lrs[self.warmup_steps - 1])

    def decays(self) -> bool:
        """Whether the LR falls below half its peak after warmup (a fit needs one)."""
        return bool(np.min(self.lrs[self.warmup_steps :]) <= 0.5 * self.peak_lr)


@dataclass(frozen=True)
class Law:
    """A law's name, its parameters (name, lower bound, upper bound, log-scaled) and
    the starting points of the fit."""

    name: str
    citation: str
    parameters: tuple[tuple[str, float, float, bool], ...]
    starts: tuple[dict[str, float], ...]
    #: (values, the LR after each drop, the LR area since it, the steps since it) -> how
    #: much of each LR drop's loss reduction has arrived (0 to 1)
    gain: Callable[..., np.ndarray]

    @property
    def names(self) -> list[str]:
        return [name for name, *_ in self.parameters]


def multi_power_gain(values: dict[str, float], drop_lrs, areas, steps_since) -> np.ndarray:
    """G(eta_k^-gamma S_k(t)) = 1 - (C x + 1)^-beta."""
    x = np.power(np.maximum(drop_lrs, 1e-30), -values["gamma"]) * areas
    return 1.0 - np.power(values["C"] * x + 1.0, -values["beta"])


def annealing_gain(values: dict[str, float], drop_lrs, areas, steps_since) -> np.ndarray:
    """1 - lambda^(steps since the drop): the momentum recursion's sum, normalised."""
    return 1.0 - np.power(values["lambda"], steps_since)


MULTI_POWER = Law(
    "multi-power",
    "Luo et al. 2025, A Multi-Power Law for Loss Curve Prediction Across Learning Rate "
    "Schedules, arXiv 2503.12811",
    (("L0", 0.0, math.inf, False), ("A", 1e-6, 1e6, True), ("alpha", 0.01, 3.0, False),
     ("B", 1e-4, 1e5, True), ("C", 1e-4, 1e8, True), ("beta", 0.01, 5.0, False),
     ("gamma", 0.0, 1.5, False), ("nu", 0.0, 2.0, False), ("mu", 0.0, 1.5, False)),
    tuple({"alpha": alpha, "beta": beta, "gamma": gamma, "C": c}
          for alpha in (0.3, 0.6) for beta, gamma in ((0.5, 0.5), (1.5, 0.3))
          for c in (1.0, 100.0)),
    multi_power_gain,
)  # fmt: skip
ANNEALING = Law(
    "annealing",
    "Tissue et al. 2024, Scaling Law with Learning Rate Annealing, arXiv 2408.11029",
    (("L0", 0.0, math.inf, False), ("A", 1e-6, 1e6, True), ("alpha", 0.01, 3.0, False),
     ("B", 1e-4, 1e5, True), ("lambda", 0.5, 0.99999, False), ("nu", 0.0, 2.0, False),
     ("mu", 0.0, 1.5, False)),
    tuple({"alpha": alpha, "lambda": lam} for alpha in (0.3, 0.6) for lam in (0.99, 0.999)),
    annealing_gain,
)  # fmt: skip
LAWS = {law.name: law for law in (MULTI_POWER, ANNEALING)}


def predict(law: Law, values: dict[str, float], trajectory: Trajectory, at: np.ndarray,
            reference_batch: float) -> np.ndarray:  # fmt: skip
    """The loss after ``at`` updates (each in 1..steps) of ``trajectory``."""
    at = np.asarray(at, dtype=int)
    lrs, warmup = trajectory.lrs, trajectory.warmup_steps
    relative_batch = trajectory.batches / reference_batch
    temperature = lrs * np.power(relative_batch, -values["nu"])
    # area[t]: the progress of the first t updates, each its LR x (batch / reference)^mu
    area = np.concatenate([[0.0], np.cumsum(lrs * np.power(relative_batch, values["mu"]))])
    # The drops after warmup: update k's LR below update k-1's (a rise is a negative drop).
    k = np.arange(warmup, trajectory.steps)
    drops = temperature[k - 1] - temperature[k]
    kept = drops != 0
    k, drops = k[kept], drops[kept]
    if len(k) > MAX_DROP_TERMS:  # merge neighbours: each block's drop at its last step
        blocks = np.array_split(np.arange(len(k)), MAX_DROP_TERMS)
        k = np.array([k[b[-1]] for b in blocks])
        drops = np.array([drops[b].sum() for b in blocks])
    plateau = values["B"] * temperature[warmup - 1]
    since = at[:, None] - k[None, :]  # updates at the lower LR so far
    areas = np.where(since > 0, area[at][:, None] - area[k][None, :], 0.0)
    gain = law.gain(values, lrs[k][None, :], areas, np.maximum(since, 0))
    annealed = values["B"] * np.sum(np.where(since > 0, drops[None, :] * gain, 0.0), axis=1)
    annealed = np.where(at >= warmup, annealed, 0.0)
    progress = values["A"] * np.power(np.maximum(area[at], 1e-30), -values["alpha"])
    return values["L0"] + progress + plateau - annealed


# ---------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class Curve:
    """A fitted run: its trajectory and observed losses (``losses[i]`` after ``at[i]``
    updates; a window's mean stands at its steps ``windows[i]``)."""

    name: str
    trajectory: Trajectory
    at: np.ndarray  # update counts with an observed loss
    losses: np.ndarray
    final: float | None = None  # the validation loss after the last update, if measured

    def windows(
        self, count: int = 40, skip: float = FIRST_FRACTION
    ) -> list[tuple[np.ndarray, float]]:
        """(update counts, mean observed loss) of ``count`` consecutive windows over the
        run past its first ``skip`` fraction (and past warmup): noise averaged out. The law
        is averaged over at most five evenly spaced counts of each window (it is smooth
        there), which keeps a fit fast."""
        start = max(self.trajectory.warmup_steps + 1, math.ceil(skip * self.trajectory.steps))
        kept = self.at >= start
        at, losses = self.at[kept], self.losses[kept]
        if len(at) == 0:
            return []
        parts = np.array_split(np.arange(len(at)), min(count, len(at)))
        return [(at[p][np.unique(np.linspace(0, len(p) - 1, min(5, len(p))).round().astype(int))],
                 float(np.mean(losses[p]))) for p in parts if len(p)]  # fmt: skip


@dataclass
class Fit:
    """A fitted law: parameter values, their covariance (in the fit's scaled space) and
    per-run residuals; ``predict_with_spread`` carries the uncertainty to a schedule."""

    law: Law
    values: dict[str, float]
    reference_batch: float
    scaled: np.ndarray
    covariance: np.ndarray
    rms_relative_error: dict[str, float]
    #: final validation loss - the law's loss at the end, over the runs that have one:
    #: (mean, standard deviation, runs); the validation set's own difficulty
    validation_offset: tuple[float, float, int] = (0.0, 0.0, 0)
    fit_from: float = FIRST_FRACTION  # the fraction of each run the fit skipped

    def predict(self, trajectory: Trajectory, at=None) -> np.ndarray:
        at = np.arange(1, trajectory.steps + 1) if at is None else at
        return predict(self.law, self.values, trajectory, at, self.reference_batch)

    def window_errors(self, curve: Curve) -> np.ndarray:
        return window_errors(self.law, self.values, curve.trajectory,
                             curve.windows(skip=self.fit_from), self.reference_batch)  # fmt: skip

    def predict_with_spread(self, trajectory: Trajectory, at) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, standard deviation): the parameters' covariance carried to the
        prediction to first order (the delta method, central differences in the fit's
        scaled parameters)."""
        centre = self.predict(trajectory, at)
        if not np.all(np.isfinite(self.covariance)):
            return centre, np.full_like(centre, np.inf)
        gradient = []
        for i in range(len(self.scaled)):
            step = 1e-4 * max(1.0, abs(self.scaled[i]))
            moved = []
            for sign in (1, -1):
                shifted = self.scaled.copy()
                shifted[i] += sign * step
                moved.append(predict(self.law, _unscale(self.law, shifted), trajectory, at,
                                     self.reference_batch))  # fmt: skip
            gradient.append((moved[0] - moved[1]) / (2 * step))
        gradient = np.array(gradient)  # parameters x points
        variance = np.einsum("ip,ij,jp->p", gradient, self.covariance, gradient)
        return centre, np.sqrt(np.maximum(variance, 0.0))


def window_errors(
    law: Law,
    values: dict[str, float],
    trajectory: Trajectory,
    parts: list[tuple[np.ndarray, float]],
    reference_batch: float,
) -> np.ndarray:
    """(predicted - observed) / observed of each window's mean loss."""
    if not parts:
        return np.zeros(0)
    predicted = predict(law, values, trajectory, np.concatenate([p for p, _ in parts]),
                        reference_batch)  # fmt: skip
    bounds = np.cumsum([0] + [len(p) for p, _ in parts])
    means = np.array([predicted[a:b].mean() for a, b in itertools.pairwise(bounds)])
    observed = np.array([m for _, m in parts])
    return (means - observed) / observed


def _bounds(law: Law) -> tuple[np.ndarray, np.ndarray]:
    lows = [math.log(low) if log else low for _, low, _, log in law.parameters]
    highs = [math.log(high) if log else high for _, _, high, log in law.parameters]
    return np.array(lows), np.array(highs)


def _unscale(law: Law, scaled: np.ndarray) -> dict[str, float]:
    return {name: float(math.exp(v) if log else v)
            for (name, _, _, log), v in zip(law.parameters, scaled, strict=True)}  # fmt: skip


def fit(
    law: Law,
    curves: Sequence[Curve],
    reference_batch: float | None = None,
    fit_from: float = FIRST_FRACTION,
) -> Fit:
    """Fit ``law`` to ``curves`` (least squares of the relative error of window means,
    from several starting points). Raises ValueError naming what the runs lack."""
    from scipy.optimize import least_squares

    check_fit_inputs(curves)
    batches = sorted({float(b) for c in curves for b in c.trajectory.batches})
    reference = float(reference_batch or batches[0])
    lows, highs = _bounds(law)
    index = {name: i for i, name in enumerate(law.names)}
    check_fit_from(fit_from)
    windows = [(c, c.windows(skip=fit_from)) for c in curves]
    # L0, the floor of an infinitely slow anneal, lies below the losses the law describes;
    # the bound is the highest window (a noisy low window must not cap it).
    floor = min(m for _, parts in windows for _, m in parts)
    highs[index["L0"]] = max(m for _, parts in windows for _, m in parts)
    frozen_batch = len(batches) == 1
    if frozen_batch:  # one batch size: the batch terms cannot be seen
        for name in ("nu", "mu"):
            highs[index[name]] = lows[index[name]] + 1e-12

    def residuals(scaled: np.ndarray, which=None) -> np.ndarray:
        values = _unscale(law, scaled)
        used = windows if which is None else which
        errors = [window_errors(law, values, c.trajectory, parts, reference) for c, parts in used]
        ends = [(c, c.final, end_loss(law, values, c.trajectory, reference))
                for c, _ in used if c.final is not None]  # fmt: skip
        if which is None and ends:
            # The final validation losses, at the offset that fits them best (the
            # validation set's own difficulty): the end of a run is what a user predicts.
            offset = float(np.mean([final - end for _, final, end in ends]))
            errors.append(np.array([FINAL_WEIGHT * (end + offset - final) / final
                                    for _, final, end in ends]))  # fmt: skip
        return np.concatenate(errors)

    def solve(start: np.ndarray, which=None, evaluations: int = 1000):
        return least_squares(residuals, start, bounds=(lows, highs), loss="soft_l1",
                             f_scale=0.01, x_scale="jac", args=(which,),
                             max_nfev=evaluations)  # fmt: skip

    # A short descent from every start, then the best one to convergence.
    best = None
    for overrides in law.starts:
        start = {
            "L0": 0.8 * floor,
            "A": 1.0,
            "B": 10.0,
            "nu": 0.0 if frozen_batch else 0.5,
            "mu": 0.0 if frozen_batch else 0.5,
        }
        start.update(overrides)
        scaled = np.array([math.log(start[n]) if log else start[n]
                           for n, _, _, log in law.parameters])  # fmt: skip
        result = solve(np.clip(scaled, lows, highs), evaluations=40)
        if best is None or result.cost < best.cost:
            best = result
    best = solve(best.x)
    jacobian, residual = best.jac, best.fun
    dof = max(1, len(residual) - len(lows))
    sigma2 = float(residual @ residual) / dof
    try:
        covariance = sigma2 * np.linalg.pinv(jacobian.T @ jacobian)
    except np.linalg.LinAlgError:  # pragma: no cover - pinv converges for finite input
        covariance = np.full((len(lows), len(lows)), np.inf)
    values = _unscale(law, best.x)
    gaps = [c.final - end_loss(law, values, c.trajectory, reference)
            for c in curves if c.final is not None]  # fmt: skip
    offset = (float(np.mean(gaps)), float(np.std(gaps, ddof=1)) if len(gaps) > 1 else 0.0,
              len(gaps))  # fmt: skip
    rms = {}
    for curve, parts in windows:
        r = residuals(best.x, [(curve, parts)])
        rms[curve.name] = float(np.sqrt(np.mean(r**2))) if len(r) else math.nan
    return Fit(law, values, reference, best.x, covariance, rms, offset, fit_from)


def end_loss(law: Law, values: dict[str, float], trajectory: Trajectory, reference: float):
    """The law's loss after the last update."""
    return float(predict(law, values, trajectory, np.array([trajectory.steps]), reference)[0])


def check_fit_from(fit_from: float) -> None:
    if not 0 <= fit_from < 1:
        raise ValueError(f"--fit-from: must be in [0, 1), got {fit_from}")


def check_fit_inputs(curves: Sequence[Curve]) -> None:
    """What a fit needs: two runs with different LR sequences, one of which decays."""
    if len(curves) < 2:
        raise ValueError(
            f"--fit: the runs hold {len(curves)} schedule (runs of one schedule are averaged); "
            "the law needs runs of at least two schedules of the same model and data, one of "
            "which decays its LR (e.g. a constant and a cosine run)"
        )
    if not any(c.trajectory.decays() for c in curves):
        raise ValueError(
            "--fit: no run decays its LR below half its peak; the law's annealing term "
            "needs one (add a cosine, linear or WSD run)"
        )
    schedules = {(c.trajectory.lrs.tobytes(), c.trajectory.batches.tobytes()) for c in curves}
    if len(schedules) < 2:
        raise ValueError("--fit: every run has the same LR schedule; give two schedules")
