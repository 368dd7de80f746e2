"""Analytic ground truth: Gaussian mixtures with closed-form denoisers, scores and maps."""

from pfd.analytic.conditional import ConditionalGaussianMixture
from pfd.analytic.exact import exact_map, exact_method
from pfd.analytic.gmm import GaussianMixture

__all__ = ["ConditionalGaussianMixture", "GaussianMixture", "exact_map", "exact_method"]
