"""Scalar spectral metrics of a matrix, as pure functions of its singular values.

Every function takes ``sigma``, an array ``[..., R]`` of singular values (float,
non-negative; R = min(m, n) of the matrix; any order, though the engine gives
them descending) and returns a float64 array of shape ``[...]``: one value per
spectrum, so a whole ``[T, R]`` history of one matrix is one call.

Definitions (docs/metrics.md#spectral-metrics), with p_i = σ_i / Σ_j σ_j:

- ``entropy``: H = −Σ_i p_i log p_i (natural log; terms with p_i = 0 count 0);
- ``effective_rank``: exp(H) (Roy & Vetterli), between 1 and R;
- ``normalized_effective_rank``: exp(H) / R, between 1/R and 1. The paper's
  equations print H itself, but its code and plots use exp(H)/R: this is the
  default "normalised effective rank"; ``entropy`` keeps the raw H beside it;
- ``spectral_norm`` σ_1, ``frobenius_norm`` sqrt(Σσ²), ``nuclear_norm`` Σσ,
  ``stable_rank`` Σσ² / σ_1².

Degenerate spectra give defined answers and never raise or warn: an all-zero
spectrum (or R = 0) has norms 0 and NaN entropy, effective ranks and stable
rank (there is no normalised spectrum); a spectrum holding NaN, ±Inf or a
negative value gives NaN for every metric.

Heavy-tailed metrics (docs/metrics.md#heavy-tailed-metrics-weightwatcher) follow
WeightWatcher 0.7.7's conventions: the eigenvalues λ = σ² of WᵀW, unnormalised,
a continuous power-law fit of their tail with xmin chosen by the smallest
Kolmogorov-Smirnov distance, and the norm metrics built from α. They need the
matrix's shape as well (the Marchenko-Pastur edge depends on it):
``heavy_tail_metrics(sigma, shape)``; ``power_law_fit(evals)`` fits one ESD.
They are not part of ``METRIC_NAMES`` (what ``spectral_metrics`` gives from σ alone);
``STORED_METRIC_NAMES`` is every metric an analysis stores (both families, one
``stable_rank``), and ``matrix_metrics(sigma, shape)`` computes them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import SpecdynError

__all__ = [
    "EVALS_THRESHOLD",
    "FIT_NAMES",
    "FIT_REASONS",
    "CONV2D_NORM",
    "HEAVY_TAIL_NAMES",
    "STORED_METRIC_NAMES",
    "conv_heavy_tail_metrics",
    "fit_nan_note",
    "fit_nan_step_notes",
    "matrix_metrics",
    "MIN_EVALS",
    "PowerLawFit",
    "heavy_tail_metrics",
    "power_law_fit",
    "METRIC_NAMES",
    "spectral_metrics",
    "entropy",
    "effective_rank",
    "normalized_effective_rank",
    "spectral_norm",
    "frobenius_norm",
    "nuclear_norm",
    "stable_rank",
]

METRIC_NAMES = (
    "normalized_effective_rank",
    "effective_rank",
    "entropy",
    "spectral_norm",
    "frobenius_norm",
    "nuclear_norm",
    "stable_rank",
)


class _Prepared:
    """A spectrum batch scaled by its largest value, with validity masks."""

    def __init__(self, sigma: np.ndarray | list | float) -> None:
        s = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
        self.rank = s.shape[-1]
        with np.errstate(all="ignore"):
            # invalid: any NaN/Inf/negative entry in the spectrum
            self.invalid = ~np.all(np.isfinite(s) & (s >= 0), axis=-1)
            self.top = np.max(s, axis=-1, initial=0.0)
            self.top = np.where(self.invalid, np.nan, self.top)
            self.zero = ~self.invalid & (self.top == 0)
            # scaling by σ_1 keeps sums of squares clear of overflow and underflow
            safe_top = np.where(self.invalid | self.zero, 1.0, self.top)
            self.scaled = np.where(self.invalid[..., None], 0.0, s) / safe_top[..., None]


def _entropy(p: _Prepared) -> np.ndarray:
    """H of a prepared spectrum; NaN where invalid or all zero."""
    with np.errstate(all="ignore"):
        total = np.sum(p.scaled, axis=-1)
        probs = p.scaled / np.where(total > 0, total, 1.0)[..., None]
        terms = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
        h = -np.sum(terms, axis=-1)
    # rounding can push H a hair below 0 for a single non-zero value
    h = np.maximum(h, 0.0)
    return np.where(p.invalid | p.zero, np.nan, h)


def entropy(sigma: np.ndarray) -> np.ndarray:
    """Spectral entropy H = −Σ p_i log p_i, p_i = σ_i/Σσ (natural log), shape [...].

    sigma: [..., R] singular values. NaN for an all-zero or invalid spectrum.
    """
    return _entropy(_Prepared(sigma))


def effective_rank(sigma: np.ndarray) -> np.ndarray:
    """Effective rank exp(H), in [1, R], shape [...]; NaN for all-zero/invalid spectra.

    sigma: [..., R] singular values.
    """
    return np.exp(entropy(sigma))


def normalized_effective_rank(sigma: np.ndarray) -> np.ndarray:
    """Normalised effective rank exp(H)/R, in [1/R, 1], shape [...].

    sigma: [..., R] singular values, R = min(m, n). NaN for all-zero/invalid spectra
    (and for R = 0).
    """
    p = _Prepared(sigma)
    if p.rank == 0:
        return np.full(p.invalid.shape, np.nan)
    return np.exp(_entropy(p)) / p.rank


def spectral_norm(sigma: np.ndarray) -> np.ndarray:
    """Spectral norm σ_1 (the largest value), shape [...]; 0 for all zero, NaN if invalid.

    sigma: [..., R] singular values.
    """
    return _Prepared(sigma).top


def frobenius_norm(sigma: np.ndarray) -> np.ndarray:
    """Frobenius norm sqrt(Σσ²), shape [...]; 0 for all zero, NaN if invalid.

    sigma: [..., R] singular values.
    """
    p = _Prepared(sigma)
    with np.errstate(all="ignore"):
        return p.top * np.sqrt(np.sum(p.scaled**2, axis=-1))


def nuclear_norm(sigma: np.ndarray) -> np.ndarray:
    """Nuclear norm Σσ, shape [...]; 0 for all zero, NaN if invalid.

    sigma: [..., R] singular values.
    """
    p = _Prepared(sigma)
    with np.errstate(all="ignore"):
        return p.top * np.sum(p.scaled, axis=-1)


def stable_rank(sigma: np.ndarray) -> np.ndarray:
    """Stable rank Σσ²/σ_1², in [1, R], shape [...]; NaN for all-zero/invalid spectra.

    sigma: [..., R] singular values.
    """
    p = _Prepared(sigma)
    with np.errstate(all="ignore"):
        sr = np.sum(p.scaled**2, axis=-1)
    return np.where(p.invalid | p.zero, np.nan, sr)


def spectral_metrics(sigma: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of ``METRIC_NAMES`` for a batch of spectra.

    sigma: array-like [..., R] of singular values (converted to float64), R =
    min(m, n) of the matrices; a 1-D spectrum gives 0-d arrays.
    Returns {name: float64 array of shape [...]} in ``METRIC_NAMES`` order.
    Never raises for degenerate values and emits no warnings: all-zero spectra
    give norms 0 and NaN entropy/effective ranks/stable rank; spectra with
    NaN/Inf/negative entries give NaN everywhere.
    """
    p = _Prepared(sigma)
    with np.errstate(all="ignore"):
        h = _entropy(p)
        eff = np.exp(h)
        sum_sq = np.sum(p.scaled**2, axis=-1)
        nuclear = p.top * np.sum(p.scaled, axis=-1)
        frob = p.top * np.sqrt(sum_sq)
        stable = np.where(p.invalid | p.zero, np.nan, sum_sq)
        norm_eff = eff / p.rank if p.rank > 0 else np.full(h.shape, np.nan)
    return {
        "normalized_effective_rank": np.asarray(norm_eff, dtype=np.float64),
        "effective_rank": np.asarray(eff, dtype=np.float64),
        "entropy": np.asarray(h, dtype=np.float64),
        "spectral_norm": np.asarray(p.top, dtype=np.float64),
        "frobenius_norm": np.asarray(frob, dtype=np.float64),
        "nuclear_norm": np.asarray(nuclear, dtype=np.float64),
        "stable_rank": np.asarray(stable, dtype=np.float64),
    }


# --------------------------------------------------------------------------------------
# Heavy-tailed metrics (WeightWatcher 0.7.7 conventions)

HEAVY_TAIL_NAMES = (
    "alpha",
    "alpha_stderr",
    "xmin",
    "ks_distance",
    "num_tail",
    "alpha_weighted",
    "log_alpha_norm",
    "log_norm",
    "log_spectral_norm",
    "stable_rank",
    "mp_bulk_max",
    "mp_softrank",
    "num_above_mp_edge",
)

EVALS_THRESHOLD = 1e-5
"""Eigenvalues at or below this (absolute) value are left out of the power-law fit,
as WeightWatcher's ``EVALS_THRESH``; the norm metrics keep them."""

MIN_EVALS = 8
"""Fewer eigenvalues than this (R = min(m, n)) give NaN: WeightWatcher's default
``min_evals`` skips such layers."""

_SMALL_N = 20  # below this many fitted eigenvalues WeightWatcher switches to its small-N fit
_SMALL_N_MIN_TAIL = 8  # the small-N fit's smallest tail
_LB_SLACK = 1e-9  # a coarse KS lower bound this close to the best exact D is checked exactly
_EXACT_BATCH = 32  # candidates whose exact KS distance is computed in one array operation


class PowerLawFit(NamedTuple):
    """One ESD's continuous power-law fit p(λ) ∝ λ^−α for λ ≥ xmin.

    alpha: the MLE exponent; alpha_stderr: its standard error (α − 1)/√n;
    xmin: the smallest eigenvalue of the tail; ks_distance: the Kolmogorov-Smirnov
    distance D of the tail from the fitted law; num_tail: n, the eigenvalues
    ≥ xmin; reason: "" for a fit, else why the values are NaN (a note's text).
    """

    alpha: float
    alpha_stderr: float
    xmin: float
    ks_distance: float
    num_tail: int
    reason: str


def _failed_fit(reason: str) -> PowerLawFit:
    """A fit of NaNs carrying its reason."""
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, 0, reason)


def _ks_rows(x: np.ndarray, rows: np.ndarray, alphas: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """max over cols j ≥ i of |F_i(x_j) − (j−i)/n_i| for each candidate i in rows.

    F_i(x) = 1 − (x/x_i)^(1−α_i) is the fitted CDF of the tail starting at x_i and
    (j−i)/n_i the tail's empirical CDF just below x_j (WeightWatcher's one-sided KS).
    x: [N] sorted data; rows, alphas: [B]; cols: [C] sorted column indices.
    """
    n = (x.shape[0] - rows).astype(np.float64)
    with np.errstate(all="ignore"):
        ratio = x[cols][None, :] / x[rows][:, None]
        fitted = 1.0 - ratio ** (1.0 - alphas[:, None])
        k = (cols[None, :] - rows[:, None]).astype(np.float64)
        dist = np.abs(fitted - k / n[:, None])
    dist = np.where(cols[None, :] >= rows[:, None], dist, 0.0)
    return np.max(dist, axis=1)


def _exact_alpha(logs: np.ndarray, i: int) -> float:
    """The MLE α of the tail starting at index i, summed as one pass over the tail."""
    n = float(logs.shape[0] - i)
    with np.errstate(all="ignore"):
        return float(1.0 + n / (np.sum(logs[i:]) - n * logs[i]))


def _fit_standard(x: np.ndarray) -> tuple[int, float, float]:
    """Best candidate (index, α, D) of sorted data x, N ≥ 20: the smallest KS distance.

    Every candidate's α comes from cumulative sums of log x; a coarse KS lower bound
    (a grid of columns) ranks them, and exact distances are computed in that order
    until no remaining bound can beat the best, so the answer is that of a full scan.
    """
    size = x.shape[0]
    logs = np.log(x)
    # suffix sums of log(x/x_max) keep the MLE's sums clear of cancellation
    shifted = logs - logs[-1]
    suffix = np.cumsum(shifted[::-1])[::-1]
    rows = np.arange(size - 1)
    n = (size - rows).astype(np.float64)
    with np.errstate(all="ignore"):
        spread = suffix[:-1] - n * shifted[:-1]
        alphas = np.where(spread > 0, 1.0 + n / spread, np.inf)
    step = max(1, size // 64)
    grid = np.unique(np.concatenate([np.arange(0, size, step), [size - 1]]))
    bound = _ks_rows(x, rows, alphas, grid)
    order = np.argsort(bound, kind="stable")
    best_i, best_alpha, best_d = -1, np.nan, np.inf
    for start in range(0, order.shape[0], _EXACT_BATCH):
        chosen = order[start : start + _EXACT_BATCH]
        chosen = chosen[bound[chosen] <= best_d + _LB_SLACK]
        if chosen.shape[0] == 0:
            break
        exact = np.array([_exact_alpha(logs, int(i)) for i in chosen])
        dists = _ks_rows(x, chosen, exact, np.arange(int(chosen.min()), size))
        # a candidate whose α is not above 1 keeps D = 1, as WeightWatcher's does
        dists = np.where(exact > 1.0, dists, 1.0)
        for i, a, d in zip(chosen.tolist(), exact.tolist(), dists.tolist(), strict=True):
            if d < best_d or (d == best_d and i < best_i):
                best_i, best_alpha, best_d = i, a, d
    return best_i, best_alpha, best_d


def _fit_small(x: np.ndarray) -> tuple[int, float, float]:
    """Best candidate (index, α, D) of sorted data x, N < 20: WeightWatcher's small-N fit.

    α = 1 + (n−1)/Σ log(x/xmin) (bias-corrected) over tails of at least 8 values, the
    smallest D among them; with no admissible tail the whole data is the tail.
    Index −1 means no fit (a flat spectrum).
    """
    size = x.shape[0]
    logs = np.log(x)
    best_i, best_alpha, best_d = -1, np.nan, np.inf
    for i in range(size - _SMALL_N_MIN_TAIL + 1):
        n = size - i
        spread = float(np.sum(logs[i:]) - n * logs[i])
        alpha = 1.0 + (n - 1.0) / spread if spread > 1e-12 else 1.0
        if alpha <= 1.0:
            continue
        d = float(_ks_rows(x, np.array([i]), np.array([alpha]), np.arange(i, size))[0])
        if d < best_d:
            best_i, best_alpha, best_d = i, alpha, d
    if best_i >= 0:
        return best_i, best_alpha, best_d
    spread = float(np.sum(logs) - size * logs[0])
    if spread <= 1e-12:
        return -1, np.nan, np.nan
    alpha = 1.0 + (size - 1.0) / spread
    d = float(_ks_rows(x, np.array([0]), np.array([alpha]), np.arange(size))[0])
    return 0, alpha, d


def power_law_fit(evals: np.ndarray, *, threshold: float = EVALS_THRESHOLD) -> PowerLawFit:
    """The continuous power-law MLE of one ESD, xmin by the smallest KS distance.

    evals: 1-D array-like of eigenvalues λ (float, converted to float64; any order),
    usually σ² of one matrix. Only λ > ``threshold`` (absolute, default 1e-5, as
    WeightWatcher) enter the fit; ``num_tail`` counts every λ ≥ xmin. For each
    candidate xmin among the fitted values but the largest, α = 1 + n/Σ log(λ_j/xmin)
    over the n values ≥ xmin and D = max_k |1 − (λ_k/xmin)^(1−α) − k/n| (k = 0…n−1,
    λ_k ascending); the fit is the first candidate with the smallest D. With fewer than
    20 fitted values WeightWatcher's small-N rule applies: tails of at least 8 values,
    α = 1 + (n−1)/Σ log(λ_j/xmin) (docs/metrics.md#the-power-law-fit).

    Returns a `PowerLawFit`; never raises or warns for degenerate input: NaN values
    with a reason when a value is NaN/±Inf/negative ("nonfinite"), all are zero
    ("zero-matrix"), fewer than 2 exceed the threshold ("too-few-eigenvalues") or the
    fitted values are all equal ("flat-spectrum").
    """
    lam = np.ravel(np.asarray(evals, dtype=np.float64))
    if not np.all(np.isfinite(lam) & (lam >= 0)):
        return _failed_fit("nonfinite")
    if lam.shape[0] and np.max(lam) == 0:
        return _failed_fit("zero-matrix")
    x = np.sort(lam[lam > threshold])
    if x.shape[0] < 2:
        return _failed_fit("too-few-eigenvalues")
    fit = _fit_small if x.shape[0] < _SMALL_N else _fit_standard
    i, alpha, d = fit(x)
    if i < 0 or not np.isfinite(alpha):
        return _failed_fit("flat-spectrum")
    xmin = float(x[i])
    num_tail = int(np.count_nonzero(lam >= xmin))
    stderr = (alpha - 1.0) / np.sqrt(x.shape[0] - i)
    return PowerLawFit(float(alpha), float(stderr), xmin, float(d), num_tail, "")


def _check_shape(rank: int, shape: tuple[int, int]) -> tuple[int, int]:
    """(N, M) = (max, min) of a 2-D shape whose min is the spectrum's length R."""
    if len(shape) != 2 or min(shape) < 0:
        raise SpecdynError(f"shape must be (m, n) of a matrix, got {tuple(shape)}", option="shape")
    big, small = int(max(shape)), int(min(shape))
    if small != rank:
        raise SpecdynError(
            f"sigma holds {rank} values per spectrum but shape {tuple(shape)} has "
            f"min(m, n) = {small}: pass every singular value of the matrix",
            option="shape",
        )
    return big, small


def _one_spectrum(sigma: np.ndarray, big: int, small: int, threshold: float) -> tuple[dict, str]:
    """Every heavy-tailed metric of one 1-D spectrum, and the reason for NaNs ("" if none)."""
    if not np.all(np.isfinite(sigma) & (sigma >= 0)):
        return dict.fromkeys(HEAVY_TAIL_NAMES, np.nan), "nonfinite"
    # ascending, as WeightWatcher sums them: the sums do not depend on the input order
    return _esd_metrics(np.sort(sigma * sigma), big, small, threshold)


def _esd_metrics(lam: np.ndarray, big: int, small: int, threshold: float) -> tuple[dict, str]:
    """Every heavy-tailed metric of one ESD (finite λ ≥ 0, ascending) of matrices N×M =
    big×small, and the reason for NaNs; stable_rank is Σλ/λ_max here (heavy_tail_metrics
    replaces it by `stable_rank`, the one definition of the stored metric)."""
    out = dict.fromkeys(HEAVY_TAIL_NAMES, np.nan)
    top = float(np.max(lam, initial=0.0))
    if top == 0:
        return out, "zero-matrix"
    count = lam.shape[0]
    if count < MIN_EVALS:
        return out, "too-few-eigenvalues"
    total = float(np.sum(lam))
    bulk_max = total / count * (1.0 + np.sqrt(small / big)) ** 2
    out.update(
        log_norm=np.log10(total),
        log_spectral_norm=np.log10(top),
        stable_rank=total / top,
        mp_bulk_max=bulk_max,
        mp_softrank=bulk_max / top,
        num_above_mp_edge=float(np.count_nonzero(lam > bulk_max)),
    )
    fit = power_law_fit(lam, threshold=threshold)
    if fit.reason:
        return out, fit.reason
    # Σλ^α as λ_max^α · Σ(λ/λ_max)^α: no overflow for large α
    rel = np.sum((lam / top) ** fit.alpha)
    out.update(
        alpha=fit.alpha,
        alpha_stderr=fit.alpha_stderr,
        xmin=fit.xmin,
        ks_distance=fit.ks_distance,
        num_tail=float(fit.num_tail),
        alpha_weighted=fit.alpha * np.log10(top),
        log_alpha_norm=fit.alpha * np.log10(top) + np.log10(rel),
    )
    return out, ""


def heavy_tail_metrics(
    sigma: np.ndarray,
    shape: tuple[int, int],
    *,
    threshold: float = EVALS_THRESHOLD,
    return_reasons: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray]:
    """WeightWatcher's heavy-tailed metrics of a batch of spectra of one matrix shape.

    sigma: array-like [..., R] of singular values (converted to float64; any order),
    R = min(m, n), for example a [T, R] history of one matrix. shape: (m, n) of the
    matrix (either orientation). λ = σ² are the eigenvalues of WᵀW, unnormalised.
    Returns {name: float64 array of shape [...]} in ``HEAVY_TAIL_NAMES`` order:

    - ``alpha``, ``alpha_stderr``, ``xmin``, ``ks_distance``, ``num_tail``: the
      power-law fit of the λ (`power_law_fit`);
    - ``alpha_weighted`` α·log10 λ_max; ``log_alpha_norm`` log10 Σ λ^α;
      ``log_norm`` log10 Σ λ (= log10 ‖W‖_F²); ``log_spectral_norm`` log10 λ_max;
      ``stable_rank`` Σ λ / λ_max, computed by `stable_rank` (the same value as
      ``spectral_metrics``' where R ≥ 8, NaN below);
    - ``mp_bulk_max`` λ+ = (Σλ/M)(1 + √(M/N))², the Marchenko-Pastur bulk edge of a
      random N×M matrix (N ≥ M) with the same Frobenius norm; ``mp_softrank``
      λ+/λ_max; ``num_above_mp_edge`` the count of λ > λ+.

    Never raises or warns for degenerate spectra: NaN/±Inf/negative values or an
    all-zero spectrum give NaN everywhere; R < 8, fewer than 2 λ above ``threshold``
    or a flat ESD give NaN fit metrics (α and those made from it, xmin, D, n) and
    defined norm metrics (R < 8: NaN everywhere). With ``return_reasons`` the result
    is (metrics, reasons): reasons is a str array [...] of "" or "nonfinite",
    "zero-matrix", "too-few-eigenvalues", "flat-spectrum".
    Raises SpecdynError when min(shape) is not R.
    """
    s = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    big, small = _check_shape(s.shape[-1], tuple(shape))
    batch = s.shape[:-1]
    flat = s.reshape(-1, s.shape[-1])
    columns = {name: np.empty(flat.shape[0]) for name in HEAVY_TAIL_NAMES}
    reasons = np.empty(flat.shape[0], dtype=object)
    for row in range(flat.shape[0]):
        values, reasons[row] = _one_spectrum(flat[row], big, small, threshold)
        for name in HEAVY_TAIL_NAMES:
            columns[name][row] = values[name]
    # the same stable rank as METRIC_NAMES' (one definition), NaN where R < MIN_EVALS
    defined = np.full(flat.shape[0], small >= MIN_EVALS)
    columns["stable_rank"] = np.where(defined, stable_rank(flat), np.nan)
    out = {name: columns[name].reshape(batch) for name in HEAVY_TAIL_NAMES}
    if return_reasons:
        return out, reasons.astype(str).reshape(batch)
    return out


# --------------------------------------------------------------------------------------
# What an analysis stores: both families, one stable rank

FIT_NAMES = HEAVY_TAIL_NAMES[: HEAVY_TAIL_NAMES.index("log_alpha_norm") + 1]
"""The heavy-tailed metrics made from the power-law fit: NaN whenever the fit is."""

STORED_METRIC_NAMES = METRIC_NAMES + tuple(n for n in HEAVY_TAIL_NAMES if n not in METRIC_NAMES)
"""Every metric an analysis stores per matrix and step (``/metrics/<name>``):
``METRIC_NAMES``, then ``HEAVY_TAIL_NAMES`` but ``stable_rank`` (kept once, the
``METRIC_NAMES`` one, defined for every R)."""

FIT_REASONS = {
    "too-few-eigenvalues": (
        f"fewer than {MIN_EVALS} singular values, or fewer than 2 eigenvalues above "
        f"{EVALS_THRESHOLD:g}"
    ),
    "flat-spectrum": "every fitted eigenvalue equal",
    "zero-matrix": "an all-zero matrix",
    "nonfinite": "NaN/Inf weights",
}
"""Why a power-law fit gives NaN (the reasons of ``heavy_tail_metrics``) → what it means."""


def matrix_metrics(
    sigma: np.ndarray,
    shape: tuple[int, int],
    *,
    names: tuple[str, ...] | list[str] = STORED_METRIC_NAMES,
    return_reasons: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray]:
    """The stored metrics (`STORED_METRIC_NAMES`, or the subset `names`) of a batch of
    spectra of one matrix shape: what an analysis writes and a store gains from its σ.

    sigma: array-like [..., R] of singular values (float64 after conversion), R = min(m,
    n); shape: (m, n) of the matrix (either orientation). Returns {name: float64 array
    [...]} in the order of `names`: ``spectral_metrics`` for ``METRIC_NAMES``,
    ``heavy_tail_metrics`` for the others (computed only when one is asked for). With
    ``return_reasons`` the result is (metrics, reasons): reasons is a str array [...]
    of "" or a key of `FIT_REASONS`, why the heavy-tailed fit is NaN ("" everywhere
    when no heavy-tailed name is asked for).
    Never raises or warns for degenerate spectra. Raises ValueError for a name that is
    not in `STORED_METRIC_NAMES`, SpecdynError when min(shape) is not R.
    """
    unknown = [n for n in names if n not in STORED_METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}: use names of STORED_METRIC_NAMES")
    s = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    values = spectral_metrics(s) if any(n in METRIC_NAMES for n in names) else {}
    reasons = np.full(s.shape[:-1], "", dtype=object)
    if any(n not in METRIC_NAMES for n in names):
        heavy, reasons = heavy_tail_metrics(s, shape, return_reasons=True)
        values = {**heavy, **values}  # stable_rank: the METRIC_NAMES one
    else:
        _check_shape(s.shape[-1], tuple(shape))
    out = {n: np.asarray(values[n], dtype=np.float64) for n in names}
    if return_reasons:
        return out, np.asarray(reasons, dtype=str)
    return out


def fit_nan_step_notes(reasons: dict[str, str]) -> list[str]:
    """One line per reason of one step's NaN power-law fits, naming the matrices.

    reasons: matrix name → reason ("" or a key of `FIT_REASONS`), in matrix order.
    Returns e.g. ["alpha NaN (too-few-eigenvalues): head.weight"]; [] when every fit
    succeeded.
    """
    by_reason: dict[str, list[str]] = {}
    for matrix, reason in reasons.items():
        if reason:
            by_reason.setdefault(reason, []).append(matrix)
    lines = []
    for reason, matrices in by_reason.items():
        shown = ", ".join(matrices[:5]) + (
            f" and {len(matrices) - 5} more" if len(matrices) > 5 else ""
        )
        lines.append(f"alpha NaN ({reason}): {shown}")
    return lines


def fit_nan_note(matrix: str, reason: str, count: int, total: int, unit: str = "step") -> str:
    """The one line that sums up a matrix's NaN power-law fits over steps.

    matrix: its name; reason: a key of `FIT_REASONS`; count: the steps where the fit
    gave NaN for that reason, of `total` steps; unit: "step" or "epoch".
    Returns e.g. "head.weight: alpha NaN at 12 of 154 steps: too-few-eigenvalues
    (fewer than 8 singular values, ...); so are the other power-law metrics".
    """
    what = FIT_REASONS.get(reason, reason)
    return (
        f"{matrix}: alpha NaN at {count} of {total} {unit}s: {reason} ({what}); so are "
        "the other power-law metrics (docs/metrics.md#heavy-tailed-metrics-weightwatcher)"
    )


# --------------------------------------------------------------------------------------
# WeightWatcher's conv convention (per-tap matrices, one pooled ESD)

CONV2D_NORM = float(np.sqrt(0.5))
"""WeightWatcher 0.7.7's default ``conv2d_norm`` scale of a Conv2d weight: W·√(1/2)
(``sqrt(conv2d_count / 2)`` with ``conv2d_count = 1`` when layers are pooled)."""


def conv_heavy_tail_metrics(
    weight: np.ndarray,
    *,
    threshold: float = EVALS_THRESHOLD,
    scale: float = CONV2D_NORM,
) -> tuple[dict[str, float], str]:
    """WeightWatcher 0.7.7's heavy-tailed metrics of one 2-D convolution weight, by its own
    convention: per-tap matrices pooled into one ESD (docs/metrics.md#convolutions).

    weight: array-like [out, in, kh, kw] (PyTorch's Conv2d layout, converted to float64;
    a ConvTranspose2d's [in, out, kh, kw] gives the same values: a tap's σ do not depend
    on its orientation). Each of the kh·kw taps W[:, :, i, j] is an out×in matrix; its
    singular values times `scale` (WeightWatcher's default ``conv2d_norm``, √(1/2); 1.0
    for none) are squared, and the kh·kw·min(out, in) eigenvalues of all taps form one
    ESD. From it, as `heavy_tail_metrics` from a dense matrix's: the power-law fit
    (alpha … num_tail), alpha_weighted, log_alpha_norm, log_norm, log_spectral_norm and
    stable_rank = Σλ/λ_max of the pool, and the Marchenko-Pastur edge λ+ = (mean λ of
    the pool)·(1 + √(M/N))² with N, M = max, min(out, in) of one tap.

    Returns:
        ({name: float} for every name of `HEAVY_TAIL_NAMES`, reason): reason is "" or a
        key of `FIT_REASONS` (fewer than 8 pooled eigenvalues: "too-few-eigenvalues";
        NaN values for the same degenerate cases as `heavy_tail_metrics`).

    Raises:
        SpecdynError: `weight` is not 4-D.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 4:
        raise SpecdynError(
            f"a conv2d weight is [out, in, kh, kw], got shape {tuple(w.shape)}", option="weight"
        )
    nan = dict.fromkeys(HEAVY_TAIL_NAMES, float("nan"))
    if not np.all(np.isfinite(w)):
        return nan, "nonfinite"
    if w.size == 0:
        return nan, "too-few-eigenvalues"
    taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1)) * float(scale)  # [kh, kw, out, in]
    sigma = np.linalg.svd(taps, compute_uv=False)
    lam = np.sort(np.ravel(sigma * sigma))
    values, reason = _esd_metrics(lam, max(w.shape[:2]), min(w.shape[:2]), threshold)
    return {k: float(v) for k, v in values.items()}, reason
