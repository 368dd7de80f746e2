"""Analytic ground truth: Gaussian mixtures with closed-form denoisers, scores and maps."""

from pfd.analytic.gmm import GaussianMixture

__all__ = ["GaussianMixture"]
