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
"""

from __future__ import annotations

import numpy as np

__all__ = [
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
