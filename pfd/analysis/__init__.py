"""Generalization analyses in the teacher-student protocol: E_gen / E_mem, memorization to
generalization scaling, training dynamics, bias-variance, and sample-based baseline metrics."""

from pfd.analysis.baselines import (
    all_baselines,
    data_copying_ct,
    frechet_distance,
    kid,
    knn_distances,
    memorization_ratio,
    mmd_rbf,
    prdc,
)
from pfd.analysis.decomposition import BiasVariance, bias_variance, bias_variance_study
from pfd.analysis.dynamics import detect_features, training_dynamics
from pfd.analysis.generalization import (
    GeneralizationErrors,
    MemorizationBreakdown,
    ReferenceMaps,
    compare_metrics,
    generalization_errors,
    memorization_breakdown,
    reference_maps,
)
from pfd.analysis.mtog import (
    collapse_scan,
    fit_logistic,
    fit_transitions,
    half_octaves,
    memorizing_sizes,
    mtog_report,
    mtog_scaling,
    mtog_sweep,
    transition_fits,
)
from pfd.analysis.students import (
    DenoiserMLP,
    DSMTrainer,
    EnsembleDenoiser,
    EnsembleDSMTrainer,
    TrainConfig,
    dsm_loss,
)

__all__ = [
    "BiasVariance",
    "DSMTrainer",
    "DenoiserMLP",
    "EnsembleDSMTrainer",
    "EnsembleDenoiser",
    "GeneralizationErrors",
    "MemorizationBreakdown",
    "ReferenceMaps",
    "TrainConfig",
    "all_baselines",
    "bias_variance",
    "bias_variance_study",
    "collapse_scan",
    "compare_metrics",
    "data_copying_ct",
    "detect_features",
    "dsm_loss",
    "fit_logistic",
    "fit_transitions",
    "frechet_distance",
    "generalization_errors",
    "half_octaves",
    "kid",
    "knn_distances",
    "memorization_breakdown",
    "memorization_ratio",
    "memorizing_sizes",
    "mmd_rbf",
    "mtog_report",
    "mtog_scaling",
    "mtog_sweep",
    "prdc",
    "reference_maps",
    "training_dynamics",
    "transition_fits",
]
