"""The view plan of a checkpoint, for the pairs tests."""

from __future__ import annotations

from typing import NamedTuple

import torch

from specdyn.sources import discover
from specdyn.views import ViewPlan, plan_views


class Views(NamedTuple):
    """What plan_views makes of the first checkpoint under a path, with every matrix read."""

    plan: ViewPlan
    infos: dict
    config: object  # the checkpoint's config (ckpt.config), None without one
    matrices: dict[str, torch.Tensor]  # matrix name → (out, in) view matrix


def views_of(path) -> Views:
    """The view plan, tensor infos, config and matrices of the first checkpoint under path."""
    ckpt = discover(path).runs[0].checkpoints[0]
    with ckpt.open() as reader:
        keys = reader.keys()
        infos = {k: reader.info(k) for k in keys}
        plan = plan_views(infos, config=ckpt.config, source_order=keys)
        matrices = {m.name: m.extract(reader.get(m.key)).clone() for m in plan.matrices}
    return Views(plan, infos, ckpt.config, matrices)
