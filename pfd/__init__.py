"""pfd: the probability flow distance for (distilled) diffusion models.

PFD(p, q) = (E_z ||Psi(Phi_p(z)) - Psi(Phi_q(z))||^2)^(1/2): push the same Gaussian noise through
two noise-to-data maps and take the root-mean-square distance of the outputs.

>>> import pfd
>>> teacher = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])
>>> student = pfd.GaussianMixture([0.5, 0.5], [[-1.1, 0.0], [1.1, 0.0]], [0.1, 0.1])
>>> res = pfd.distance(teacher.ode_map(), student.ode_map(), n=512, progress=False)
>>> 0.0 < res.value < 0.2
True
"""

from pfd import adapters, analysis, analytic, solver_error, spec, stability
from pfd._checks import NonFiniteError, SolveBudgetError
from pfd._train import TrainConfig
from pfd._version import __version__
from pfd.analysis import bias_variance, generalization_errors
from pfd.analytic.conditional import ConditionalGaussianMixture
from pfd.analytic.gmm import GaussianMixture
from pfd.batching import auto_batch_size
from pfd.estimator import PFDResult, distance
from pfd.maps import DiffusionMap, NoiseToData, OneStepMap
from pfd.monitor import PFDMonitor
from pfd.noise import canonical_labels, canonical_noise
from pfd.schedules import karras_sigmas
from pfd.solver_error import SolverError

__all__ = [
    "ConditionalGaussianMixture",
    "DiffusionMap",
    "GaussianMixture",
    "NoiseToData",
    "NonFiniteError",
    "OneStepMap",
    "PFDMonitor",
    "PFDResult",
    "SolveBudgetError",
    "SolverError",
    "TrainConfig",
    "__version__",
    "adapters",
    "analysis",
    "analytic",
    "auto_batch_size",
    "bias_variance",
    "canonical_labels",
    "canonical_noise",
    "distance",
    "generalization_errors",
    "karras_sigmas",
    "solver_error",
    "spec",
    "stability",
]
