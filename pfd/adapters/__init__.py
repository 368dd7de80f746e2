"""Adapters: models from the wild as noise-to-data maps, with explicit conventions.

* diffusion models as EDM denoisers: :class:`EDMDenoiser`, :class:`VPDenoiser`
  (epsilon / v / x0 on a discrete alpha-bar schedule; :func:`diffusers_denoiser`),
  :class:`FlowMatchingDenoiser`, :class:`ScoreDenoiser` (VE / VP / OU scores); integrate them
  with :class:`pfd.DiffusionMap` or :class:`GridMap` (a sampler's own grid);
* diffusers folders (``save_pretrained``) as maps: :func:`load_diffusers`, :func:`diffusers_map`;
* students, each declaring ``kind="trajectory"`` or ``kind="distribution"``:
  :class:`ConsistencyStudent`, :class:`FlowMapStudent`, :class:`GridMap` (progressive
  distillation), :class:`GeneratorStudent` (one-step G(z); warns for distribution matching);
* distributional PFD: :class:`RatioCorrectedMap` and :func:`fit_ratio`.
"""

from pfd.adapters.diffusion import (
    EDMDenoiser,
    FlowMatchingDenoiser,
    GridMap,
    ScoreDenoiser,
    VPDenoiser,
    diffusers_denoiser,
    vp_sigmas,
)
from pfd.adapters.pipelines import DiffusersModel, diffusers_map, is_diffusers_folder, load_diffusers
from pfd.adapters.ratio import (
    RATIO_TRAIN,
    RatioCorrectedMap,
    RatioFit,
    RatioNet,
    fit_ratio,
    grad_log_ratio,
    ratio_heldout_loss,
    ratio_loss,
)
from pfd.adapters.students import (
    KINDS,
    ConsistencyStudent,
    CouplingWarning,
    FlowMapStudent,
    GeneratorStudent,
    check_kind,
)

__all__ = [
    "KINDS",
    "RATIO_TRAIN",
    "ConsistencyStudent",
    "CouplingWarning",
    "DiffusersModel",
    "EDMDenoiser",
    "FlowMapStudent",
    "FlowMatchingDenoiser",
    "GeneratorStudent",
    "GridMap",
    "RatioCorrectedMap",
    "RatioFit",
    "RatioNet",
    "ScoreDenoiser",
    "VPDenoiser",
    "check_kind",
    "diffusers_denoiser",
    "diffusers_map",
    "fit_ratio",
    "grad_log_ratio",
    "is_diffusers_folder",
    "load_diffusers",
    "ratio_heldout_loss",
    "ratio_loss",
    "vp_sigmas",
]
