"""Analytic ground truth: Gaussian mixtures with closed-form denoisers, scores and maps, and the
registry of named analytic teachers (:mod:`pfd.analytic.teachers`)."""

from pfd.analytic.digits import digits_images, digits_split, digits_teacher
from pfd.analytic.exact import exact_map, exact_method
from pfd.analytic.gmm import GaussianMixture
from pfd.analytic.teachers import TEACHERS, get_teacher, register_teacher

__all__ = ["TEACHERS", "GaussianMixture", "digits_images", "digits_split", "digits_teacher", "exact_map", "exact_method",
           "get_teacher", "register_teacher"]
