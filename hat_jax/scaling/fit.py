"""Scaling-law fits for hat_jax sweeps.

Two functional forms (Kaplan et al. 2020; Hoffmann et al. 2022):

  * Henighan et al. 2020, Eq. 1.1, one variable x (non-embedding parameters N, or compute C):

        L(x) = E + (x0 / x)^alpha          (E = 0 gives Kaplan's / VAR's pure power law)

  * Hoffmann et al. 2022 (Chinchilla, Approach 3), parameters N and training data D:

        L(N, D) = E + A / N^alpha + B / D^beta

Both are fitted with the Hoffmann recipe, as replicated by Besiroglu et al. 2024 (Epoch):

  * log-sum-exp parameterisation, A = exp(a), B = exp(b), E = exp(e), so that the prediction of
    log L is  LSE(a - alpha log N, b - beta log D, e)  and E, A, B stay positive without bounds;
  * a Huber loss with delta = 1e-3 on (predicted log L - observed log L), SUMMED over points (Epoch
    showed that averaging it made Hoffmann's optimiser stop early: the objective is then ~1e-6 and
    L-BFGS's relative tolerance is met at the first step);
  * L-BFGS (scipy's L-BFGS-B, no bounds) from a grid of starting points, keeping the best optimum.

Implementation choices (why they do not change the optimum):

  * Log features are centred at their mean before optimising and the intercepts mapped back
    afterwards (a = a_c + alpha * mean(log N)). This is an exact reparameterisation, so the optimum is
    the same, but the problem is far better conditioned for large N, D, C.
  * The objective is divided by delta (a positive constant: same argmin) so that it is O(|residual|)
    instead of O(delta |residual|); together with tight tolerances this lets L-BFGS converge.
  * Every grid point is scored first (cheap) and only the `top_k` best are refined with L-BFGS.
    `top_k=None` refines all of them, exactly like the Hoffmann/Epoch recipe (slower: the Chinchilla
    grid has 4500 points).

Also here: `bootstrap` (percentile intervals for every parameter), `held_out_error` (fit on all but the
largest run, predict it), and counting helpers `non_embedding_params` and `flops_6nd` (C = 6 N D,
Kaplan Eq. 2.1 / Hoffmann).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from scipy import optimize

try:
  from threadpoolctl import threadpool_limits
except ImportError:  # Optional: only makes fits faster on busy machines.
  threadpool_limits = None

HUBER_DELTA = 1e-3
PF_DAY_FLOPS = 8.64e19  # 1 PF-day in FLOPs (Kaplan §1.3); Kaplan and Henighan quote C in PF-days.

# Hoffmann et al. 2022 initialisation grid (Epoch's "replicate exactly" values), in raw coordinates.
CHINCHILLA_GRID: Mapping[str, tuple[float, ...]] = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}

# Power-law grid. alpha in raw units; "a_frac" and "e_frac" are fractions of the data's loss scale so
# that the same grid works for bits/byte (~1), nats/token (~3) or nats/image (~1000):
#   reducible loss at the geometric-mean x = a_frac * median(L),  E = e_frac * min(L).
POWER_LAW_GRID: Mapping[str, tuple[float, ...]] = {
    "alpha": (0.03, 0.07, 0.15, 0.3, 0.5, 0.8, 1.2, 2.0),
    "a_frac": (0.01, 0.03, 0.1, 0.3, 1.0),
    "e_frac": (0.1, 0.5, 0.75, 0.9, 0.97),
}

DEFAULT_TOP_K = 16


def _exp(x: float) -> float:
  """exp that returns inf instead of raising OverflowError: a degenerate bootstrap resample (e.g. several
  copies of one run) can fit an amplitude whose log exceeds 709; that refit's amplitude is then inf, as
  `x0` already is, and the percentile intervals stay defined."""
  return math.inf if x > 709.0 else math.exp(x)


class _Fit(Protocol):
  """What `bootstrap` and `held_out_error` need from a fit result."""

  def params(self) -> dict[str, float]: ...
  def predict(self, *xs: Any) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------------
# Input checking.


def _positive_array(name: str, values: Any) -> np.ndarray:
  """`values` as a 1-D float64 array, or a ValueError that says what was wrong."""
  try:
    arr = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be numbers, got {values!r:.200}: {e}") from None
  if arr.ndim == 0:
    arr = arr[None]
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D (one value per run), got shape {arr.shape}.")
  bad = ~np.isfinite(arr)
  if bad.any():
    raise ValueError(
        f"{name} has {int(bad.sum())} non-finite value(s) (NaN/inf) at index {np.flatnonzero(bad)[:5]}; "
        "drop or fix those runs (e.g. a diverged run's loss) before fitting.")
  nonpos = arr <= 0
  if nonpos.any():
    raise ValueError(
        f"{name} must be > 0 (the fit works in log space), got {arr[nonpos][:5]} at index "
        f"{np.flatnonzero(nonpos)[:5]}.")
  return arr


def _check_lengths(arrays: Mapping[str, np.ndarray]) -> int:
  lengths = {name: len(a) for name, a in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"All inputs need one value per run; got lengths {lengths}.")
  return next(iter(lengths.values()))


def _check_enough(n: int, n_params: int, what: str, distinct: Mapping[str, tuple[np.ndarray, int]],
                  hint: str):
  # One more point than parameters, so that the fit is not an exact interpolation.
  if n < n_params + 1:
    raise ValueError(
        f"{what} has {n_params} parameters and needs at least {n_params + 1} runs, got {n}. {hint}")
  for name, (arr, need) in distinct.items():
    got = len(np.unique(arr))
    if got < need:
      raise ValueError(
          f"{what} needs at least {need} distinct values of {name} to identify its exponent, got {got} "
          f"({[float(v) for v in np.unique(arr)[:5]]}). {hint}")


# ---------------------------------------------------------------------------------------------------
# The shared log-sum-exp Huber problem:
#   log L_hat_i = LSE_j(a_j - alpha_j * lx_ji [, e])
# theta = [a_1, alpha_1, ..., a_k, alpha_k, (e)], lx centred.


def _huber_objective(theta: np.ndarray, lx: np.ndarray, log_y: np.ndarray, with_offset: bool,
                     delta: float) -> tuple[Any, np.ndarray]:
  """Sum_i Huber_delta(r_i) / delta and its gradient, r_i = LSE(...) - log y_i.

  theta may carry leading batch dimensions (..., P) to score many starting points in one call; the
  value then has shape (...) and the gradient (..., P).
  """
  k = lx.shape[0]
  a = theta[..., 0:2 * k:2, None]
  alpha = theta[..., 1:2 * k:2, None]
  z = a - alpha * lx  # (..., k, n)
  if with_offset:
    e = np.broadcast_to(theta[..., -1:, None], z.shape[:-2] + (1, z.shape[-1]))
    z = np.concatenate([z, e], axis=-2)
  zmax = z.max(axis=-2)
  w = np.exp(z - zmax[..., None, :])
  s = w.sum(axis=-2)
  r = zmax + np.log(s) - log_y  # (..., n)
  w /= s[..., None, :]  # softmax weights = d LSE / d z
  absr = np.abs(r)
  value = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum(axis=-1) / delta
  g_z = w * (np.clip(r, -delta, delta) / delta)[..., None, :]  # (..., k [+1], n)
  grad = np.empty_like(theta)
  grad[..., 0:2 * k:2] = g_z[..., :k, :].sum(axis=-1)
  grad[..., 1:2 * k:2] = -(g_z[..., :k, :] * lx).sum(axis=-1)
  if with_offset:
    grad[..., -1] = g_z[..., k, :].sum(axis=-1)
  return (float(value) if theta.ndim == 1 else value), grad


@dataclasses.dataclass(frozen=True)
class _Optimum:
  theta: np.ndarray  # in centred coordinates
  objective: float  # sum of Huber terms (not divided by delta)
  converged: bool
  n_starts: int
  n_refined: int


def _single_thread_blas():
  """One BLAS thread while fitting, if threadpoolctl is installed.

  scipy's L-BFGS-B calls BLAS/LAPACK on 3x3..5x5 matrices; with OpenBLAS's default threads on a busy
  2-core machine every call spin-waits and a fit becomes ~10x slower (measured 20 s vs 1.7 s).
  """
  return threadpool_limits(limits=1, user_api="blas") if threadpool_limits else contextlib.nullcontext()


def _multistart_lbfgs(starts: np.ndarray, lx: np.ndarray, log_y: np.ndarray, with_offset: bool,
                      delta: float, top_k: int | None) -> _Optimum:
  """Scores every start, refines the best `top_k` (all if None) with L-BFGS-B, returns the best."""
  if delta <= 0:
    raise ValueError(f"Huber delta must be > 0, got {delta}.")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be >= 1 or None (refine every start), got {top_k}.")
  with np.errstate(over="ignore", invalid="ignore"):
    scores, _ = _huber_objective(starts, lx, log_y, with_offset, delta)
  order = np.argsort(np.where(np.isfinite(scores), scores, np.inf), kind="stable")
  if top_k is not None:
    order = order[:top_k]
  results = []
  with _single_thread_blas():
    for i in order:
      res = optimize.minimize(
          _huber_objective, starts[i], args=(lx, log_y, with_offset, delta), jac=True,
          method="L-BFGS-B", options={"maxiter": 10_000, "ftol": 1e-14, "gtol": 1e-10})
      if np.isfinite(res.fun) and np.all(np.isfinite(res.x)):
        results.append(res)
  if not results:
    raise RuntimeError(
        "Every L-BFGS start ended at a non-finite objective; check the inputs for extreme values or "
        "pass a `grid` closer to the expected parameters.")
  best = min(results, key=lambda r: r.fun)
  # The Huber loss with a tiny delta is nearly L1, so the line search often stops "abnormally" right
  # at the kink of the optimum. Count the fit as converged if the gradient is ~0 there, or if another
  # start that did converge reached the same objective.
  tol = 1e-9 * max(1.0, abs(best.fun))
  converged = bool(best.success or np.max(np.abs(best.jac)) < 1e-6
                   or any(r.success and r.fun <= best.fun + tol for r in results))
  return _Optimum(theta=best.x, objective=float(best.fun) * delta, converged=converged,
                  n_starts=len(starts), n_refined=len(order))


# ---------------------------------------------------------------------------------------------------
# L(x) = E + (x0 / x)^alpha.


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
  """L(x) = E + (x0 / x)^alpha = E + A * x^(-alpha), with A = x0^alpha.

  `variable` names x ("N" non-embedding parameters, "C" compute, "D" data). E is 0 for a fit with
  `with_offset=False`. `objective` is the summed Huber loss at the optimum.
  """

  E: float
  log_A: float
  alpha: float
  variable: str
  n_points: int
  objective: float
  converged: bool
  with_offset: bool = True

  @property
  def A(self) -> float:
    return _exp(self.log_A)

  @property
  def x0(self) -> float:
    """The scale in (x0/x)^alpha; inf/0 when alpha is ~0 (no power law in the data)."""
    with np.errstate(over="ignore", divide="ignore"):
      return float(np.exp(np.float64(self.log_A) / np.float64(self.alpha)))

  def predict(self, x: Any) -> np.ndarray:
    """Predicted loss at x (array-like, > 0)."""
    x = np.asarray(x, dtype=np.float64)
    return self.E + np.exp(self.log_A - self.alpha * np.log(x))

  def params(self) -> dict[str, float]:
    return {"E": self.E, "alpha": self.alpha, "x0": self.x0, "A": self.A}

  def formula(self) -> str:
    head = f"{self.E:.4g} + " if self.with_offset else ""
    return f"L({self.variable}) = {head}({self.x0:.4g}/{self.variable})^{self.alpha:.4f}"


def fit_power_law(x: Any, L: Any, *, variable: str = "N", with_offset: bool = True,
                  delta: float = HUBER_DELTA, grid: Mapping[str, Sequence[float]] | None = None,
                  top_k: int | None = DEFAULT_TOP_K) -> PowerLawFit:
  """Fits L(x) = E + (x0/x)^alpha by Huber on log L with multi-start L-BFGS.

  Args:
    x: per-run size (non-embedding params N, compute C in any unit, or data D), > 0.
    L: per-run loss, > 0 (any unit; the fitted E and A are in the same unit).
    variable: the name of x, used in `formula()` and reports.
    with_offset: False fits the pure power law L = (x0/x)^alpha (Kaplan, VAR).
    delta: Huber delta on log-loss residuals (Hoffmann: 1e-3).
    grid: starting points, keys "alpha", "a_frac", "e_frac" (see POWER_LAW_GRID).
    top_k: refine only the best top_k grid points with L-BFGS; None refines all.

  Returns:
    PowerLawFit.
  """
  x = _positive_array(variable, x)
  L = _positive_array("L", L)
  n = _check_lengths({variable: x, "L": L})
  n_params = 3 if with_offset else 2
  _check_enough(n, n_params, "L(x) = E + (x0/x)^alpha" if with_offset else "L(x) = (x0/x)^alpha",
                {variable: (x, n_params)},
                "Add runs of more sizes" + (", or fit with_offset=False." if with_offset else "."))
  grid = dict(POWER_LAW_GRID if grid is None else grid)
  missing = {"alpha", "a_frac"} - set(grid) | ({"e_frac"} - set(grid) if with_offset else set())
  if missing:
    raise ValueError(f"grid is missing keys {sorted(missing)}; expected the keys of POWER_LAW_GRID.")

  ref = float(np.mean(np.log(x)))
  lx = (np.log(x) - ref)[None, :]
  log_y = np.log(L)
  # Starting points in centred coordinates: a_c = log(reducible loss at x = exp(ref)).
  a_c = [math.log(f * float(np.median(L))) for f in grid["a_frac"]]
  if with_offset:
    e = [math.log(f * float(np.min(L))) for f in grid["e_frac"]]
    starts = np.array([(a, al, ee) for al, a, ee in itertools.product(grid["alpha"], a_c, e)])
  else:
    starts = np.array([(a, al) for al, a in itertools.product(grid["alpha"], a_c)])
  opt = _multistart_lbfgs(starts, lx, log_y, with_offset, delta, top_k)
  a_c_hat, alpha = float(opt.theta[0]), float(opt.theta[1])
  return PowerLawFit(
      E=_exp(opt.theta[2]) if with_offset else 0.0, log_A=a_c_hat + alpha * ref, alpha=alpha,
      variable=variable, n_points=n, objective=opt.objective, converged=opt.converged,
      with_offset=with_offset)


def fit_compute_law(C: Any, L: Any, **kwargs) -> PowerLawFit:
  """`fit_power_law` with x = compute C: L(C) = E + (C0/C)^alpha_C."""
  return fit_power_law(C, L, variable="C", **kwargs)


# ---------------------------------------------------------------------------------------------------
# L(N, D) = E + A / N^alpha + B / D^beta.


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
  """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Approach 3)."""

  E: float
  log_A: float
  alpha: float
  log_B: float
  beta: float
  n_points: int
  objective: float
  converged: bool
  n_starts: int
  n_refined: int

  @property
  def A(self) -> float:
    return _exp(self.log_A)

  @property
  def B(self) -> float:
    return _exp(self.log_B)

  def predict(self, N: Any, D: Any) -> np.ndarray:
    N = np.asarray(N, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    return self.E + np.exp(self.log_A - self.alpha * np.log(N)) + np.exp(self.log_B - self.beta * np.log(D))

  @property
  def allocation_exponents(self) -> tuple[float, float]:
    """(a, b) in N_opt ∝ C^a, D_opt ∝ C^b: a = beta/(alpha+beta), b = alpha/(alpha+beta)."""
    s = self.alpha + self.beta
    return self.beta / s, self.alpha / s

  def compute_optimal(self, C: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising L under C = 6 N D:

        N_opt = G (C/6)^a,  D_opt = G^-1 (C/6)^b,  G = (alpha A / (beta B))^(1/(alpha+beta)).
    """
    C = np.asarray(C, dtype=np.float64)
    a, b = self.allocation_exponents
    log_G = (math.log(self.alpha / self.beta) + self.log_A - self.log_B) / (self.alpha + self.beta)
    return np.exp(log_G + a * np.log(C / 6)), np.exp(-log_G + b * np.log(C / 6))

  def params(self) -> dict[str, float]:
    a, b = self.allocation_exponents
    return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta,
            "a": a, "b": b}

  def formula(self) -> str:
    return (f"L(N, D) = {self.E:.4g} + {self.A:.4g}/N^{self.alpha:.4f} + "
            f"{self.B:.4g}/D^{self.beta:.4f}")


def fit_chinchilla(N: Any, D: Any, L: Any, *, delta: float = HUBER_DELTA,
                   grid: Mapping[str, Sequence[float]] | None = None,
                   top_k: int | None = DEFAULT_TOP_K) -> ChinchillaFit:
  """Fits L(N, D) = E + A/N^alpha + B/D^beta with the Hoffmann et al. recipe.

  Minimises sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i) with L-BFGS
  from the grid CHINCHILLA_GRID (raw coordinates: a = log A, b = log B, e = log E).

  Args:
    N: parameters per run (state whether they include embeddings; Hoffmann's do), > 0.
    D: training tokens (or bytes, words) per run, > 0.
    L: final loss per run, > 0.
    delta: Huber delta (Hoffmann: 1e-3).
    grid: starting points with keys "alpha", "beta", "a", "b", "e" (raw coordinates).
    top_k: refine only the best top_k grid points; None refines all 4500 like Hoffmann/Epoch.
  """
  N = _positive_array("N", N)
  D = _positive_array("D", D)
  L = _positive_array("L", L)
  n = _check_lengths({"N": N, "D": D, "L": L})
  _check_enough(n, 5, "L(N, D) = E + A/N^alpha + B/D^beta", {"N": (N, 2), "D": (D, 2)},
                "Add runs that vary N and D independently, or fit L(N) / L(C) with fit_power_law.")
  grid = dict(CHINCHILLA_GRID if grid is None else grid)
  missing = set(CHINCHILLA_GRID) - set(grid)
  if missing:
    raise ValueError(f"grid is missing keys {sorted(missing)}; expected {sorted(CHINCHILLA_GRID)}.")

  ref = np.array([np.mean(np.log(N)), np.mean(np.log(D))])
  lx = np.stack([np.log(N), np.log(D)]) - ref[:, None]
  starts = np.array([
      # Map the raw-coordinate grid point to centred coordinates: a_c = a - alpha * ref.
      (a - al * ref[0], al, b - be * ref[1], be, e)
      for al, be, e, a, b in itertools.product(
          grid["alpha"], grid["beta"], grid["e"], grid["a"], grid["b"])
  ])
  opt = _multistart_lbfgs(starts, lx, np.log(L), True, delta, top_k)
  a_c, alpha, b_c, beta, e = (float(v) for v in opt.theta)
  return ChinchillaFit(
      E=_exp(e), log_A=a_c + alpha * ref[0], alpha=alpha, log_B=b_c + beta * ref[1], beta=beta,
      n_points=n, objective=opt.objective, converged=opt.converged, n_starts=opt.n_starts,
      n_refined=opt.n_refined)


# ---------------------------------------------------------------------------------------------------
# Uncertainty and validation.


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
  """Percentile intervals over bootstrap refits: intervals[name] = (low, high) at `level`."""

  level: float
  intervals: dict[str, tuple[float, float]]
  medians: dict[str, float]
  samples: dict[str, np.ndarray]
  n_ok: int
  n_failed: int

  def contains(self, name: str, value: float) -> bool:
    lo, hi = self.intervals[name]
    return lo <= value <= hi


def bootstrap(fit_fn: Callable[..., _Fit], data: Sequence[Any], n: int = 100, seed: int = 0, *,
              level: float = 0.95, fraction: float = 1.0, replace: bool = True) -> BootstrapResult:
  """Percentile bootstrap: refits `fit_fn(*resampled_data)` `n` times.

  Args:
    fit_fn: e.g. `fit_power_law` or `fit_chinchilla` (or a functools.partial of one); its result must
      have `params() -> dict[str, float]`.
    data: the arrays fit_fn takes, one value per run each, e.g. (N, L) or (N, D, L); rows are resampled
      together.
    n: number of refits.
    seed: numpy seed for the resampling.
    level: central interval probability (0.95 -> 2.5th..97.5th percentiles; Hoffmann reported the
      10th..90th, i.e. level=0.8).
    fraction, replace: resample round(fraction * runs) rows with or without replacement. The default is
      the ordinary bootstrap; Hoffmann used fraction=0.8, replace=False.

  Resamples that the fit rejects (e.g. too few distinct sizes after resampling) are skipped and
  counted in `n_failed`; more than half failing raises, since the intervals would then be biased.
  """
  if n < 2:
    raise ValueError(f"bootstrap needs n >= 2 refits, got {n}.")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}.")
  arrays = [np.asarray(d) for d in data]
  if not arrays:
    raise ValueError("data must hold the arrays that fit_fn takes, e.g. (N, L).")
  m = _check_lengths({f"data[{i}]": a for i, a in enumerate(arrays)})
  size = int(round(fraction * m))
  if size < 1 or (not replace and size > m):
    raise ValueError(f"fraction={fraction} gives {size} of {m} rows (replace={replace}).")
  rng = np.random.default_rng(seed)
  collected: dict[str, list[float]] = {}
  failed = 0
  for _ in range(n):
    idx = rng.choice(m, size=size, replace=replace)
    try:
      fit = fit_fn(*(a[idx] for a in arrays))
    except (ValueError, RuntimeError):
      failed += 1
      continue
    for k, v in fit.params().items():
      collected.setdefault(k, []).append(v)
  if failed > n // 2:
    raise RuntimeError(
        f"{failed} of {n} bootstrap refits failed; the data are too few or too degenerate for "
        "resampling (add runs, or use fraction/replace=False).")
  q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
  samples = {k: np.asarray(v, dtype=np.float64) for k, v in collected.items()}
  intervals = {k: tuple(float(p) for p in np.nanpercentile(v, q)) for k, v in samples.items()}
  medians = {k: float(np.nanmedian(v)) for k, v in samples.items()}
  return BootstrapResult(level=level, intervals=intervals, medians=medians, samples=samples,
                         n_ok=n - failed, n_failed=failed)


@dataclasses.dataclass(frozen=True)
class HeldOutResult:
  """Fit on all runs but one (the largest), prediction for that run."""

  fit: Any
  index: int
  inputs: tuple[float, ...]
  observed: float
  predicted: float

  @property
  def relative_error(self) -> float:
    """(predicted - observed) / observed: > 0 means the fit is pessimistic about the largest run."""
    return (self.predicted - self.observed) / self.observed


def held_out_error(fit_fn: Callable[..., _Fit], data: Sequence[Any], size: Any = None) -> HeldOutResult:
  """Fits `fit_fn` on all runs but the largest and predicts the largest.

  Args:
    fit_fn: e.g. fit_power_law; called as fit_fn(*data_without_largest).
    data: (x..., L) arrays; the last one is the loss, the others are `predict`'s inputs.
    size: what "largest" means, per run; defaults to the product of the inputs (x for a power law,
      N*D ∝ compute for a Chinchilla fit). Ties go to the first such run.
  """
  arrays = [np.asarray(d, dtype=np.float64) for d in data]
  if len(arrays) < 2:
    raise ValueError("data must be (x..., L): at least one input array and the loss.")
  m = _check_lengths({f"data[{i}]": a for i, a in enumerate(arrays)})
  size = np.prod(arrays[:-1], axis=0) if size is None else np.asarray(size, dtype=np.float64)
  if size.shape != (m,):
    raise ValueError(f"size must have one value per run ({m}), got shape {size.shape}.")
  i = int(np.argmax(size))
  keep = np.arange(m) != i
  fit = fit_fn(*(a[keep] for a in arrays))
  inputs = tuple(float(a[i]) for a in arrays[:-1])
  predicted = float(np.asarray(fit.predict(*inputs)))
  return HeldOutResult(fit=fit, index=i, inputs=inputs, observed=float(arrays[-1][i]),
                       predicted=predicted)


# ---------------------------------------------------------------------------------------------------
# Counting.


def flops_6nd(N: Any, D: Any) -> Any:
  """Training compute C = 6 N D FLOPs (2 per multiply-add x 3 for forward + backward; Kaplan Eq. 2.1).

  N: parameters (non-embedding for Kaplan/Henighan, all for Hoffmann), D: tokens processed. Divide
  by PF_DAY_FLOPS for PF-days. Returns a float for scalars, an array otherwise.
  """
  scalar = np.ndim(N) == 0 and np.ndim(D) == 0
  N_arr = _positive_array("N", N)
  D_arr = _positive_array("D", D)
  if len(N_arr) != len(D_arr) and 1 not in (len(N_arr), len(D_arr)):
    raise ValueError(f"N and D must have the same length (or one be a scalar), got {len(N_arr)} and "
                     f"{len(D_arr)}.")
  C = 6.0 * N_arr * D_arr
  return float(C[0]) if scalar else C


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def non_embedding_params(params_tree: Any, embedding_paths: Iterable[str] = (r"embed",)) -> int:
  """Number of parameters whose path matches none of `embedding_paths`.

  Paths are the "/"-joined keys of a leaf, e.g. "params/backbone/embed/embedding"; each pattern is a
  regular expression searched in the path (case-insensitive). The default drops anything with
  "embed" in its path; pass e.g. (r"embed", r"lm_head") to also drop an untied output projection
  (Kaplan excludes both embedding matrices). Works on nested dicts/lists of arrays and flax trees
  (including nn.Partitioned boxes).
  """
  import jax  # Deferred: the rest of this module (and the report CLI) does not need jax.

  patterns = [re.compile(p, re.IGNORECASE) for p in embedding_paths]
  total = 0
  leaves, _ = jax.tree_util.tree_flatten_with_path(params_tree)
  if not leaves:
    raise ValueError("params_tree has no array leaves; pass the model's params (e.g. variables['params']).")
  for path, leaf in leaves:
    name = "/".join(_key_name(k) for k in path)
    if not any(p.search(name) for p in patterns):
      total += int(np.size(leaf))
  return total
