"""Small reference students for the analytic setting (CPU-sized)."""

from pfd.distill.diffratio import DiffRatioResult, fit_score_net, generator_gradient, train_diffratio

__all__ = ["DiffRatioResult", "fit_score_net", "generator_gradient", "train_diffratio"]
