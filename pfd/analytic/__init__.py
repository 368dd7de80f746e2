"""Analytic ground truth: Gaussian mixtures with closed-form denoisers, scores and maps."""

from pfd.analytic.digits import digits_images, digits_split, digits_teacher
from pfd.analytic.exact import exact_map, exact_method
from pfd.analytic.gmm import GaussianMixture

__all__ = ["GaussianMixture", "digits_images", "digits_split", "digits_teacher", "exact_map", "exact_method"]
