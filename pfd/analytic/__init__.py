"""Analytic ground truth: Gaussian mixtures with closed-form denoisers, scores and maps, and the
registry of named analytic teachers (:mod:`pfd.analytic.teachers`)."""

from pfd.analytic.conditional import ConditionalGaussianMixture
from pfd.analytic.digits import (
    digits_conditional_teacher,
    digits_images,
    digits_labels,
    digits_split,
    digits_teacher,
)
from pfd.analytic.exact import exact_map, exact_method
from pfd.analytic.gmm import GaussianMixture
from pfd.analytic.teachers import TEACHERS, get_teacher, register_teacher

__all__ = [
    "TEACHERS",
    "ConditionalGaussianMixture",
    "GaussianMixture",
    "digits_conditional_teacher",
    "digits_images",
    "digits_labels",
    "digits_split",
    "digits_teacher",
    "exact_map",
    "exact_method",
    "get_teacher",
    "register_teacher",
]
