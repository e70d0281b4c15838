"""The public names of the figures, named once: `specdyn.plots` exports them and
`specdyn.__init__` loads them lazily (matplotlib is imported on first use only)."""

PLOT_NAMES = (
    "PlotError",
    "FigureOptions",
    "draw",
    "plot_rank",
    "plot_metric",
    "plot_sv",
    "plot_alignment",
    "plot_alignment_score",
    "plot_agreement",
    "plot_agreement_score",
    "plot_alignment_matrix",
    "plot_esd",
    "plot_all",
    "plot_dynamics",
    "plot_side_by_side",
    "plot_branch_agreement",
    "plot_split",
    "plot_prune",
)
