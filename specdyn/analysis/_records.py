"""What an analysis takes and gives: engine and matrix options, progress events, and the
record of what was done for each run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..store import CheckpointProblem
from ..types import Note

__all__ = [
    "ComputeOptions",
    "MatrixSelection",
    "Progress",
    "RunAnalysis",
    "RunFailure",
    "AnalyzeResult",
]


@dataclass(frozen=True)
class ComputeOptions:
    """How singular values are computed.

    device: "auto" | "cpu" | "cuda" | "cuda:N"; precision: "float64" (σ within
    1e-6·σ1 of float64 LAPACK) or "float32" (1e-4·σ1, faster on GPUs with weak
    float64); exact: force float64 LAPACK; max_memory: bytes the engine may hold
    on the device at once (None: no bound beyond what fits); conv_metrics: how the
    heavy-tailed metrics of a Conv2d weight are stored, "flattened" (of the flattened
    (out, in·kh·kw) view, like every other metric) or "weightwatcher" (WeightWatcher's
    per-tap ESD, `specdyn.metrics.conv_heavy_tail_metrics`; recorded in the store's
    options, docs/metrics.md#convolutions).
    """

    device: str = "auto"
    precision: str = "float64"
    exact: bool = False
    max_memory: int | None = None
    conv_metrics: str = "flattened"


@dataclass(frozen=True)
class MatrixSelection:
    """Which matrices are analysed: regexes on canonical matrix names (re.search).

    transposed: regex of parameters that are ConvTranspose weights (besides
    those recognised by name).
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    transposed: str | None = None


@dataclass(frozen=True)
class Progress:
    """One progress event: `matrices_done` of `n_matrices` at step `step_index` of `n_steps`.

    phase: "hashing" while checkpoint fingerprints are computed (before any
    SVD; `matrices_done` is then 0), "reference" while the agreement's
    reference checkpoint is decomposed (before the other steps), "analysing"
    while steps are computed. store: the store being written ("" when unknown).
    """

    run: str
    step: int
    step_index: int
    n_steps: int
    matrices_done: int
    n_matrices: int
    phase: str = "analysing"
    store: str = ""


@dataclass
class RunAnalysis:
    """What `analyze` did for one run."""

    name: str
    source_root: str
    store_path: str
    step_unit: str
    steps_selected: list[int]
    steps_computed: list[int]
    steps_already_done: list[int]
    n_matrices: int
    skipped: dict[str, int]
    aliases: dict[str, str]
    methods: dict[str, int]
    device: str
    seconds: float
    notes: list[Note] = field(default_factory=list)
    k: int | None = None
    reference: int | None = None
    pairs: int = 0
    pairs_preset: str = ""
    steps_with_vectors: list[int] = field(default_factory=list)
    steps_failed: list[int] = field(default_factory=list)
    # checkpoints of the run that were found but could not be analysed (also in the store)
    problems: list[CheckpointProblem] = field(default_factory=list)

    @property
    def incomplete(self) -> bool:
        """Whether a checkpoint of the run could not be analysed (unreadable, unsafe, no
        step, or failed while read): what ``--strict`` turns into exit status 1."""
        return bool(self.problems or self.steps_failed)

    def to_dict(self) -> dict:
        """JSON-serialisable form (for `--json`)."""
        d = asdict(self)
        d["notes"] = [asdict(n) for n in self.notes]
        return d


@dataclass
class RunFailure:
    """A run of a folder of several runs that could not be analysed (the others were).

    name: the run's name; source_root: its folder; store_path: the store it was to be
    written to (it may hold the steps computed before the failure); reason: the error's
    one line, options in Python wording (``matrices.exclude``); cli_reason: the same line
    with options as flags (``--exclude``); kind: the error's class name
    (``ShapeChangedError``); position: the run's place (from 0) among the runs chosen,
    in discovery order; file, step: the file and step at fault, when known.
    """

    name: str
    source_root: str
    store_path: str
    reason: str
    cli_reason: str
    kind: str
    position: int = 0
    file: str | None = None
    step: int | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable form (for `--json`)."""
        return asdict(self)


@dataclass
class AnalyzeResult:
    """Result of `analyze`: one `RunAnalysis` per run analysed, discovery notes, and
    `failed`: one `RunFailure` per run of a folder of several runs that could not be
    analysed (in discovery order; the other runs were analysed all the same)."""

    runs: list[RunAnalysis]
    notes: list[Note]
    failed: list[RunFailure] = field(default_factory=list)

    @property
    def incomplete(self) -> bool:
        """Whether any run has a checkpoint that could not be analysed (``--strict``)."""
        return any(r.incomplete for r in self.runs)

    def to_dict(self) -> dict:
        """JSON-serialisable form (for `--json`)."""
        return {
            "runs": [r.to_dict() for r in self.runs],
            "failed": [f.to_dict() for f in self.failed],
            "notes": [asdict(n) for n in self.notes],
        }
