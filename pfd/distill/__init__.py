"""Small reference students for the analytic setting (CPU-sized)."""

from pfd.distill.diffratio import (
    DIFFRATIO_TRAIN,
    REFIT_TRAIN,
    DiffRatioResult,
    fit_score_net,
    generator_gradient,
    train_diffratio,
)
from pfd.distill.matching import MATCHING_TRAIN, MixtureGenerator, gradient_bias, train_matching
from pfd.distill.trajectory import (
    TRAJECTORY_TRAIN,
    ExactFlowMap,
    TrajectoryMap,
    TrajectoryStudent,
    exact_pairs,
    train_trajectory_student,
)

__all__ = [
    "DIFFRATIO_TRAIN",
    "MATCHING_TRAIN",
    "REFIT_TRAIN",
    "TRAJECTORY_TRAIN",
    "DiffRatioResult",
    "ExactFlowMap",
    "MixtureGenerator",
    "TrajectoryMap",
    "TrajectoryStudent",
    "exact_pairs",
    "fit_score_net",
    "generator_gradient",
    "gradient_bias",
    "train_diffratio",
    "train_matching",
    "train_trajectory_student",
]
