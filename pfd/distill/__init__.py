"""Small reference students for the analytic setting (CPU-sized)."""

from pfd.distill.diffratio import DiffRatioResult, fit_score_net, generator_gradient, train_diffratio
from pfd.distill.matching import MixtureGenerator, gradient_bias, train_matching
from pfd.distill.trajectory import ExactFlowMap, TrajectoryMap, TrajectoryStudent, exact_pairs, train_trajectory_student

__all__ = [
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
