import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def one_thread():
    """One torch thread: tiny tensors on a shared 2-core machine run far faster without intra-op
    threading, and CPU-time measurements are fair only without OpenMP threads spinning."""
    from pfd._train import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def two_modes():
    import pfd

    return pfd.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.5, -0.5]], [0.2, 0.1])


@pytest.fixture
def mixed_full():
    """A 3-component 2-D mixture with full covariances."""
    import pfd

    covs = torch.tensor(
        [[[0.30, 0.10], [0.10, 0.20]], [[0.05, -0.02], [-0.02, 0.08]], [[0.5, 0.0], [0.0, 0.01]]],
        dtype=torch.float64,
    )
    return pfd.GaussianMixture([0.3, 0.5, 0.2], [[-2.0, 0.0], [1.0, 1.0], [0.5, -2.0]], covs)
