import numpy as np
import pytest
import torch
from scipy import stats

from pfd.noise import BLOCK, NoiseSource, canonical_noise, derive_seed


def test_rows_depend_only_on_seed_and_index():
    full = canonical_noise(3 * BLOCK + 17, (2, 3), seed=4)
    assert full.shape == (3 * BLOCK + 17, 2, 3) and full.dtype == torch.float64
    src = NoiseSource(4, (2, 3))
    for start, stop in [(0, 1), (5, 900), (BLOCK - 3, BLOCK + 5), (2 * BLOCK, 3 * BLOCK + 17), (1000, 1000)]:
        assert torch.equal(src.get(start, stop), full[start:stop])
    assert torch.equal(canonical_noise(10, (2, 3), seed=4, start=BLOCK - 5), full[BLOCK - 5 : BLOCK + 5])


def test_seeds_differ_and_are_gaussian():
    a = canonical_noise(20_000, (1,), seed=0).numpy().ravel()
    b = canonical_noise(20_000, (1,), seed=1).numpy().ravel()
    assert not np.array_equal(a, b)
    assert stats.kstest(a, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    # blocks are independent streams, not shifted copies
    assert abs(np.corrcoef(a[:BLOCK], a[BLOCK : 2 * BLOCK])[0, 1]) < 0.12


def test_derive_seed_validation():
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        derive_seed(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        derive_seed(1.5)
    with pytest.raises(ValueError, match="shape must be a non-empty tuple"):
        NoiseSource(0, ())
    with pytest.raises(ValueError, match="n must be >= 1"):
        canonical_noise(0, (2,))
