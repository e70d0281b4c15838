"""What a store file says about itself (schema 4): a ``description``, a ``units`` where
there is one and a ``dims`` attribute (the names of its axes) on every dataset, and HDF5
dimension scales on the axes that have a coordinate when the file is built.

The coordinates are root datasets ``/step`` (a copy of ``/steps/step``), ``/matrix``
(``/matrices/name``) and ``/pair`` (``/pairs/name``, stores with vectors): netCDF readers
(h5netcdf, xarray) find a dimension by its scale's name in the dataset's group or a parent
group, so a scale under ``/steps`` would not name an axis of ``/metrics``. Everything here
is written once, while a file is built, before its checksums (docs/store.md,
"Self-description").
"""

from __future__ import annotations

import h5py
import numpy as np

from . import _layout as layout

__all__ = ["DOCS", "SCALES", "annotate", "describe_file", "spec"]

DOCS = "docs/store.md"

# The axes with a coordinate at build time: root dataset → where its values come from.
SCALES = {"step": layout.STEPS_STEP, "matrix": layout.MATRICES_NAME, "pair": "pairs/name"}

_STEP = ("step",)
_MATRIX = ("matrix",)
_PAIR = ("pair",)
_TIME = "seconds since 1970-01-01 00:00:00"

# path → (description, units, dims); "{unit}" is the store's step unit.
_EXACT: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "step": ("coordinate of the step axis: a copy of /steps/step", "{unit}", _STEP),
    "matrix": ("coordinate of the matrix axis: a copy of /matrices/name", None, _MATRIX),
    "pair": ("coordinate of the pair axis: a copy of /pairs/name", None, _PAIR),
    layout.STEPS_STEP: ("training step (or epoch) of each checkpoint, ascending", "{unit}", _STEP),
    layout.STEPS_DONE: (
        "1 when every value of the step is written; only rows with 1 are valid",
        None,
        _STEP,
    ),
    layout.STEPS_EPOCH: ("epoch of the checkpoint, -1 when unknown", "epoch", _STEP),
    layout.STEPS_SOURCE: ("checkpoint path (file, folder or hf://repo@branch:commit)", None, _STEP),
    layout.STEPS_FORMAT: ("checkpoint format tag", None, _STEP),
    layout.STEPS_SIZE: ("total size of the checkpoint's weight files", "bytes", _STEP),
    layout.STEPS_MTIME: ("newest modification time of the checkpoint's weight files", _TIME, _STEP),
    layout.STEPS_SHA256: (
        "hex SHA-256 of the weight files, empty until the step is done",
        None,
        _STEP,
    ),
    layout.STEPS_NOTES: ("JSON list of one-line notes on the step", None, _STEP),
    layout.STEPS_FLAG: (
        "one-line flag on the step (duplicate, failed...), empty for none",
        None,
        _STEP,
    ),
    layout.STEPS_INVOCATION: (
        "row of /provenance that computed the step, -1 if not done",
        None,
        _STEP,
    ),
    layout.STEPS_ORIGIN: (
        "where the step number came from (name, metadata:global_step, ...)",
        None,
        _STEP,
    ),
    layout.MATRICES_NAME: ("canonical matrix name (docs/views.md), forward order", None, _MATRIX),
    layout.MATRICES_PARAM: ("canonical parameter name the matrix is cut from", None, _MATRIX),
    layout.MATRICES_KEY: ("raw checkpoint key of the parameter", None, _MATRIX),
    layout.MATRICES_KIND: ("view kind (linear, conv, embedding, qkv_part, ...)", None, _MATRIX),
    layout.MATRICES_PART: ("slice tag (q, g, 7), empty for a whole parameter", None, _MATRIX),
    layout.MATRICES_SHAPE: ("(out, in) of the matrix view", None, ("matrix", "out_in")),
    layout.MATRICES_RANK: ("R = min(out, in): the number of singular values", None, _MATRIX),
    layout.MATRICES_SOURCE_SHAPE: ("JSON list: shape of the stored parameter", None, _MATRIX),
    layout.MATRICES_SOURCE_DTYPE: ("stored dtype of the parameter", None, _MATRIX),
    layout.MATRICES_METHOD: (
        "SVD method used for the matrix at the step",
        None,
        ("step", "matrix"),
    ),
    layout.SKIPPED_PARAM: ("parameter not analysed", None, ("skipped",)),
    layout.SKIPPED_REASON: ("why the parameter was not analysed", None, ("skipped",)),
    layout.ALIASES_ALIAS: ("tied parameter not analysed on its own", None, ("alias",)),
    layout.ALIASES_TARGET: ("the parameter analysed in its place", None, ("alias",)),
    layout.PROBLEMS_SOURCE: ("checkpoint found with the run but not analysed", None, ("problem",)),
    layout.PROBLEMS_KIND: (
        "kind of problem (corrupt, unsafe-pickle, no-step, ...)",
        None,
        ("problem",),
    ),
    layout.PROBLEMS_MESSAGE: ("one-line reason", None, ("problem",)),
    layout.PROVENANCE_RECORD: (
        "JSON record of one invocation that wrote the store",
        None,
        ("slot",),
    ),
    layout.PROVENANCE_USED: ("1 for slots holding a record", None, ("slot",)),
    "pairs/name": ("pair name FIRST~SECOND (docs/pairs.md), forward order", None, _PAIR),
    "pairs/first": ("first matrix of the pair", None, _PAIR),
    "pairs/second": ("second matrix of the pair", None, _PAIR),
    "pairs/first_side": (
        "vectors of the first matrix compared: u (left) or v (right)",
        None,
        _PAIR,
    ),
    "pairs/second_side": (
        "vectors of the second matrix compared: u (left) or v (right)",
        None,
        _PAIR,
    ),
    "pairs/rule": ("rule that made the pair", None, _PAIR),
    "pairs/options": ("JSON: the rule's options and conv alignment definition", None, _PAIR),
    "pairs/blocks": ("block couples stored one by one (1: only the diagonal)", None, _PAIR),
    "pairs/k": ("diagonal length k_p", None, _PAIR),
    "pairs/dim": ("vector length", None, _PAIR),
    "pairs/skipped_pair": ("pair a rule wanted but could not make", None, ("skipped_pair",)),
    "pairs/skipped_reason": ("why the pair could not be made", None, ("skipped_pair",)),
    "alignment/done": ("1 when the step's alignment is written", None, _STEP),
    layout.ALIGNMENT_SCORE: ("alignment score a(t) (Eq. 4) of each pair", None, ("step", "pair")),
    "agreement/done": ("1 when the step's agreement is written", None, _STEP),
    layout.AGREEMENT_SCORE: ("agreement score s(t) of each matrix", None, ("step", "matrix")),
    layout.VECTORS_STEP: ("steps whose singular vectors are kept", "{unit}", ("vector_step",)),
    "vectors/done": ("1 when the slot's vectors are written", None, ("vector_step",)),
    "training/step": (
        "step at which some training metric was logged",
        "{unit}",
        ("training_step",),
    ),
    "training/name": ("training metric name as logged", None, ("training_metric",)),
    "training/values": (
        "training metric values, NaN where not logged",
        None,
        ("training_metric", "training_step"),
    ),
    "training/source": ("where the training metric was read", None, ("training_metric",)),
    "checksums/static/name": (
        "content written at build: a dataset path or @OBJECT:ATTRIBUTE",
        None,
        ("item",),
    ),
    "checksums/static/digest": ("crc32+adler32 digest of that content", None, ("item",)),
}

# group → (description of a dataset named NAME in it, units, dims)
_PREFIX: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "sigma/": (
        "singular values of matrix NAME, descending; NaN for steps not done",
        None,
        ("step", "sv"),
    ),
    "alignment/diagonal/": ("alignment diagonal A_ii (Eq. 3) of pair NAME", None, ("step", "k")),
    "alignment/heads/": (
        "alignment diagonal per block couple of pair NAME",
        None,
        ("step", "head", "k"),
    ),
    "alignment/matrix/": ("whole alignment matrix of pair NAME", None, ("step", "i", "j")),
    "agreement/diagonal/": ("agreement diagonal S_ii (Eq. 5) of matrix NAME", None, ("step", "k")),
    "agreement/matrix/": ("whole agreement matrix S of matrix NAME", None, ("step", "i", "j")),
    "vectors/u/": (
        "top-k left singular vectors (columns) of matrix NAME",
        None,
        ("vector_step", "out", "k"),
    ),
    "vectors/v/": (
        "top-k right singular vectors (columns) of matrix NAME",
        None,
        ("vector_step", "in", "k"),
    ),
}

# metric → (what it is, units); docs/metrics.md defines them
_METRICS: dict[str, tuple[str, str | None]] = {
    "normalized_effective_rank": ("normalised effective rank exp(H)/R", None),
    "effective_rank": ("effective rank exp(H)", None),
    "entropy": ("spectral entropy H", "nat"),
    "spectral_norm": ("spectral norm (largest singular value)", None),
    "frobenius_norm": ("Frobenius norm", None),
    "nuclear_norm": ("nuclear norm (sum of singular values)", None),
    "stable_rank": ("stable rank ||W||_F^2 / ||W||_2^2", None),
    # heavy-tailed (WeightWatcher 0.7.7 conventions, λ = σ² unnormalised); NaN where the
    # power-law fit is degenerate (a step note says why)
    "alpha": ("power-law exponent of the ESD tail (lambda = sigma^2)", None),
    "alpha_stderr": ("standard error of alpha, (alpha - 1)/sqrt(num_tail)", None),
    "xmin": ("smallest eigenvalue lambda = sigma^2 of the power-law tail", None),
    "ks_distance": ("Kolmogorov-Smirnov distance D of the tail from the fitted law", None),
    "num_tail": ("number of eigenvalues in the power-law tail (>= xmin)", None),
    "alpha_weighted": ("alpha * log10(lambda_max)", None),
    "log_alpha_norm": ("log10 of sum(lambda^alpha)", None),
    "log_norm": ("log10 of sum(lambda) = log10 ||W||_F^2", None),
    "log_spectral_norm": ("log10 of lambda_max = log10 ||W||_2^2", None),
    "mp_bulk_max": ("Marchenko-Pastur bulk edge lambda+ for the matrix's shape and norm", None),
    "mp_softrank": ("MP soft rank lambda+ / lambda_max", None),
    "num_above_mp_edge": ("number of eigenvalues above the Marchenko-Pastur edge", None),
}


def spec(path: str, step_unit: str = "step") -> tuple[str, str | None, tuple[str, ...]]:
    """(description, units or None, dims) of the dataset at `path` (no leading "/").

    Raises:
        KeyError: a path the schema does not know (a dataset added without a description).
    """
    if path in _EXACT:
        description, units, dims = _EXACT[path]
    elif path.startswith(layout.METRICS + "/"):
        name = path[len(layout.METRICS) + 1 :]
        what, units = _METRICS.get(name, (f"metric {name}", None))
        description = (
            f"{what} of each matrix at each step (docs/metrics.md); NaN for steps not done"
        )
        dims = ("step", "matrix")
    elif path.startswith("checksums/"):
        what = path.rsplit("/", 1)[-1]
        section = path.split("/")[1]
        if what == "rows":
            description, units, dims = (
                f"digest of each row of the {section} section's datasets",
                None,
                ("row", "dataset"),
            )
        else:
            description, units, dims = (
                f"the datasets of the {section} section, in column order",
                None,
                ("dataset",),
            )
    else:
        prefix = next((p for p in _PREFIX if path.startswith(p)), None)
        if prefix is None:
            raise KeyError(path)
        text, units, dims = _PREFIX[prefix]
        description = text.replace("NAME", path[len(prefix) :])
    if units == "{unit}":
        units = step_unit
    return description, units, dims


def annotate(ds: h5py.Dataset, step_unit: str = "step") -> None:
    """Set the ``description``, ``units`` (when it has one) and ``dims`` attributes of one
    dataset of a file being built."""
    description, units, dims = spec(ds.name.lstrip("/"), step_unit)
    ds.attrs["description"] = description
    if units:
        ds.attrs["units"] = units
    ds.attrs["dims"] = np.array(dims, dtype=object)


def describe_file(f: h5py.File, step_unit: str) -> None:
    """Describe every dataset of a file being built (before its checksums): the root's
    ``docs`` attribute, the coordinate datasets made dimension scales, every dataset
    annotated, and the scales attached to each dataset all of whose axes have one
    (h5netcdf refuses a dataset with some axes scaled and others not)."""
    f.attrs["docs"] = DOCS
    scales: dict[str, h5py.Dataset] = {}
    for name, source in SCALES.items():
        if source not in f:
            continue
        data = f[source][()]
        if f[source].dtype.kind == "O":
            scale = layout.vlen_strings(f, name, layout.read_strings(f[source]))
        else:
            scale = layout.new_dataset(f, name, data.shape, data.dtype)
            scale[...] = data
        scale.make_scale(name)
        scales[name] = scale
    datasets: list[h5py.Dataset] = []
    f.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
    for ds in datasets:
        annotate(ds, step_unit)
        dims = spec(ds.name.lstrip("/"), step_unit)[2]
        if ds.name.lstrip("/") in scales or not all(d in scales for d in dims):
            continue
        if any(ds.shape[i] != scales[d].shape[0] for i, d in enumerate(dims)):
            continue  # never expected: a table whose length is not its axis's
        for i, d in enumerate(dims):
            ds.dims[i].attach_scale(scales[d])
