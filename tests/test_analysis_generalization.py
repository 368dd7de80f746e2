"""E_gen / E_mem anchors and the bias-variance identity."""

import math

import pytest
import torch

import pfd
from pfd.analysis import bias_variance, compare_metrics, generalization_errors, reference_maps
from pfd.maps import CachedMap

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def teacher():
    return pfd.GaussianMixture([0.4, 0.6], [[-1.5, 0.5], [1.5, -0.5]], [0.2, 0.1])


def test_empirical_model_has_zero_e_mem_and_true_mixture_zero_e_gen(teacher):
    train = teacher.sample(16, seed=7)
    emp = pfd.GaussianMixture.empirical(train)
    err = generalization_errors(emp.ode_map(), teacher, train, n=256)
    assert err.e_mem.value == 0.0 and err.e_mem.ci95 == (0.0, 0.0)
    assert err.e_gen.value > 0.2
    err = generalization_errors(teacher.ode_map(), teacher, train, n=256)
    assert err.e_gen.value == 0.0
    assert err.e_mem.value == pytest.approx(generalization_errors(emp.ode_map(), teacher, train, n=256).e_gen.value, rel=1e-12)


def test_e_gen_of_empirical_model_decreases_with_n(teacher):
    refs_teacher = CachedMap(teacher.ode_map())
    vals = []
    for n_train in (4, 64, 1024):
        train = teacher.sample(n_train, seed=n_train)
        refs = reference_maps(refs_teacher, train)
        vals.append(generalization_errors(refs.empirical, None, None, n=512, references=refs).e_gen)
    assert vals[0].value > vals[1].value > vals[2].value
    assert vals[1].ci95[0] > vals[2].ci95[1]  # separated beyond noise
    assert refs_teacher.misses == 1 and refs_teacher.hits == 2  # teacher integrated once, on shared noise


def test_shared_noise_and_student_evaluated_once(teacher):
    train = teacher.sample(8, seed=1)
    calls = []
    wrong = pfd.GaussianMixture([0.4, 0.6], [[-1.4, 0.5], [1.5, -0.4]], [0.2, 0.1]).ode_map()

    def student(z):
        calls.append(z.shape[0])
        return wrong(z)

    err = generalization_errors(pfd.OneStepMap(student, shape=(2,)), teacher, train, n=300, batch_size=128)
    assert sum(calls) == 300  # one pass for both E_gen and E_mem
    direct = pfd.distance(wrong, teacher.ode_map(), n=300, progress=False)
    assert err.e_gen.value == direct.value


def test_generalization_errors_bad_input(teacher):
    with pytest.raises(TypeError, match="student must be a callable"):
        generalization_errors(3, teacher, teacher.sample(4))
    with pytest.raises(TypeError, match="teacher must be a GaussianMixture or a callable"):
        generalization_errors(teacher.ode_map(), "x", teacher.sample(4))
    with pytest.raises(ValueError, match="train_set must be \\(N, d\\)"):
        generalization_errors(teacher.ode_map(), teacher, torch.zeros(4))
    with pytest.raises(TypeError, match="references must come from reference_maps"):
        generalization_errors(teacher.ode_map(), None, None, references=object())


def _affine(mean, a, sigma_max=80.0):
    m = torch.as_tensor(mean, dtype=torch.float64)
    return pfd.OneStepMap(lambda z: m + a * (sigma_max * z - m), shape=(2,))


def test_bias_variance_closed_form_for_affine_maps():
    # isotropic Gaussians share a = s / sqrt(s^2 + sigma_max^2), so Phi_k - Phi_t = (1 - a)(m_k - m_t) for every z
    s, smax = 1.0, 80.0
    a = s / math.sqrt(s * s + smax * smax)
    mt = torch.tensor([0.0, 0.0], dtype=torch.float64)
    means = torch.tensor([[0.3, 0.1], [-0.2, 0.4], [0.5, -0.3]], dtype=torch.float64)
    bv = bias_variance([_affine(m, a) for m in means], _affine(mt, a), n=100)
    mbar = means.mean(0)
    assert bv.bias2_plugin == pytest.approx((1 - a) ** 2 * float((mbar - mt).pow(2).sum()), rel=1e-12)
    assert bv.var_plugin == pytest.approx((1 - a) ** 2 * float((means - mbar).pow(2).sum(1).mean()), rel=1e-12)
    assert bv.var == pytest.approx(bv.var_plugin * 3 / 2, rel=1e-12)
    assert bv.e_gen == pytest.approx([(1 - a) * float((m - mt).norm()) for m in means], rel=1e-12)


def _offset(base, c):
    c = torch.as_tensor(c, dtype=torch.float64)
    return pfd.OneStepMap(lambda z: base(z) + c, shape=(2,))


def test_bias_variance_students_are_teacher_plus_fixed_offsets():
    # o_k = t + c_k for every z: plug-in bias^2 = |c_bar|^2, plug-in var = (1/K) sum |c_k - c_bar|^2,
    # unbiased var = the sample variance of the offsets (divisor K - 1), bias^2 = |c_bar|^2 - var / K
    teacher = pfd.OneStepMap(lambda z: torch.sin(3 * z) + z, shape=(2,))
    offs = torch.tensor([[0.3, 0.1], [-0.2, 0.4], [0.5, -0.3], [0.1, 0.0]], dtype=torch.float64)
    bv = bias_variance([_offset(teacher, c) for c in offs], teacher, n=50, batch_size=7)
    cbar = offs.mean(0)
    spread = float((offs - cbar).pow(2).sum(1).sum())
    assert bv.bias2_plugin == pytest.approx(float(cbar.pow(2).sum()), rel=1e-12)
    assert bv.var_plugin == pytest.approx(spread / 4, rel=1e-12)
    assert bv.var == pytest.approx(spread / 3, rel=1e-12)
    assert bv.bias2 == pytest.approx(float(cbar.pow(2).sum()) - spread / 12, rel=1e-12)
    assert bv.bias2 + bv.var == pytest.approx(bv.mean_gen2, rel=1e-12)
    assert bv.identity_residual < 1e-14
    assert bv.bias_share == pytest.approx(bv.bias2 / float(offs.pow(2).sum(1).mean()), rel=1e-12)
    # the terms do not depend on z, so their intervals over the noise sample have zero width
    for key in ("bias2", "var", "bias2_plugin", "var_plugin", "bias_share"):
        lo, hi = bv.ci95[key]
        assert hi - lo == pytest.approx(0.0, abs=1e-12)


def test_bias_variance_unbiased_over_training_sets():
    # offsets c_k ~ N(mu, s^2 I): population bias^2 = |mu|^2, var = d s^2. Averaged over many
    # draws of K = 3 students the unbiased terms hit them; the plug-in ones miss by var/K and -var/K.
    teacher = pfd.OneStepMap(lambda z: z, shape=(2,))
    mu, s, k, reps = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.5, 3, 1000
    g = torch.Generator().manual_seed(7)
    res = []
    for _ in range(reps):
        offs = mu + s * torch.randn(k, 2, generator=g, dtype=torch.float64)
        bv = bias_variance([_offset(teacher, c) for c in offs], teacher, n=2)
        res.append([bv.bias2, bv.var, bv.bias2_plugin, bv.var_plugin])
    r = torch.tensor(res)
    mean, se = r.mean(0), r.std(0) / math.sqrt(reps)
    true_b, true_v = float(mu.pow(2).sum()), 2 * s * s
    assert abs(float(mean[0]) - true_b) < 4 * float(se[0])
    assert abs(float(mean[1]) - true_v) < 4 * float(se[1])
    assert float(mean[2]) - true_b == pytest.approx(true_v / k, abs=4 * float(se[2]))
    assert float(mean[3]) == pytest.approx(true_v * (k - 1) / k, abs=4 * float(se[3]))
    assert float(mean[2]) - true_b > 10 * float(se[2])  # the plug-in bias really is biased here


def test_bias_variance_ci_over_noise_matches_direct_computation():
    # z-dependent offsets o_k(z) = t(z) + c_k z_1: per-sample terms scale with z_1^2
    teacher = pfd.OneStepMap(lambda z: 2 * z, shape=(2,))
    offs = torch.tensor([[0.3, 0.1], [-0.2, 0.4], [0.5, -0.3]], dtype=torch.float64)
    students = [pfd.OneStepMap(lambda z, c=c: 2 * z + z[:, :1] * c, shape=(2,)) for c in offs]
    n = 400
    bv = bias_variance(students, teacher, n=n, seed=3, batch_size=64)
    z1 = pfd.canonical_noise(n, (2,), seed=3)[:, 0]
    cbar = offs.mean(0)
    per = (float(cbar.pow(2).sum()) - float((offs - cbar).pow(2).sum(1).sum()) / 6) * z1 * z1  # unbiased bias^2 per z
    assert bv.bias2 == pytest.approx(float(per.mean()), rel=1e-12)
    half = 1.959963984540054 * float(per.std()) / math.sqrt(n)
    assert bv.ci95["bias2"] == pytest.approx((float(per.mean()) - half, float(per.mean()) + half), rel=1e-10)
    assert bv == bias_variance(students, teacher, n=n, seed=3, batch_size=1000)  # chunking does not matter


def test_bias_variance_jackknife_over_students_matches_leave_one_out_calls():
    from scipy.stats import t as t_dist

    teacher = pfd.OneStepMap(lambda z: torch.tanh(z), shape=(3,))
    offs = torch.tensor([[0.3, 0.1, 0.0], [-0.2, 0.4, 0.1], [0.5, -0.3, 0.2], [0.1, 0.0, -0.4]], dtype=torch.float64)
    students = [pfd.OneStepMap(lambda z, c=c: torch.tanh(z) + c * (1 + z[:, :1]), shape=(3,)) for c in offs]
    bv = bias_variance(students, teacher, n=64, batch_size=20)
    jk = bv.extra["ci95_students"]
    loo = [bias_variance(students[:i] + students[i + 1:], teacher, n=64) for i in range(4)]
    q = t_dist.ppf(0.975, 3)
    for key in ("bias2", "var", "mean_gen2", "bias_share"):
        r = torch.tensor([getattr(b, key) for b in loo], dtype=torch.float64)
        se = math.sqrt(3 / 4 * float((r - r.mean()).pow(2).sum()))
        centre = getattr(bv, key)
        assert jk[key] == pytest.approx([centre - q * se, centre + q * se], rel=1e-9, abs=1e-12)
    assert "ci95_students" not in bias_variance(students[:2], teacher, n=8).extra  # K = 2: no jackknife


def test_bias_variance_identity_to_float_precision(teacher):
    students = [pfd.GaussianMixture.empirical(teacher.sample(8, seed=s)).ode_map() for s in range(4)]
    bv = bias_variance(students, teacher.ode_map(), n=200, batch_size=64)
    assert bv.identity_residual < 1e-14
    assert bv.mean_gen2 == pytest.approx(sum(e * e for e in bv.e_gen) / 4, rel=1e-12)
    # each student's E_gen agrees with the independent pfd.distance estimate
    assert bv.e_gen[0] == pytest.approx(pfd.distance(students[0], teacher.ode_map(), n=200, progress=False).value, rel=1e-12)
    assert bv.to_dict()["bias2_plus_var"] == pytest.approx(bv.mean_gen2, rel=1e-14)


def test_bias_variance_bad_input(teacher):
    with pytest.raises(ValueError, match="at least 2 maps"):
        bias_variance([teacher.ode_map()], teacher.ode_map())
    with pytest.raises(TypeError, match=r"students\[1\] must be a callable"):
        bias_variance([teacher.ode_map(), 1], teacher.ode_map())
    with pytest.raises(TypeError, match="teacher must be a callable"):
        bias_variance([teacher.ode_map()] * 2, None)
    with pytest.raises(ValueError, match="shape= is required"):
        bias_variance([lambda z: z, lambda z: z], lambda z: z)


def test_compare_metrics_separates_memorizer_from_teacher(teacher):
    train = teacher.sample(32, seed=3)
    rows = compare_metrics(
        {"memorizer": (pfd.GaussianMixture.empirical(train).ode_map(), train), "teacher": (teacher.ode_map(), train)},
        teacher, teacher.sample(256, seed=4), n=256)
    mem, tea = rows
    assert mem["e_mem"] == 0.0 and tea["e_gen"] == 0.0
    assert mem["memorization_ratio"] == 1.0 and tea["memorization_ratio"] < 0.3
    assert mem["ct"] < tea["ct"]


def _nearest(x, y):
    return torch.cdist(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)).argmin(1)


def test_memorization_breakdown_of_a_basin_permuting_copier(teacher):
    """A student that outputs training points but the wrong ones for some basins: E_same = 0 and
    E_switched, the agreement and the copy fraction match a direct computation."""
    from pfd.analysis import memorization_breakdown

    train = teacher.sample(6, seed=11)
    emp = pfd.GaussianMixture.empirical(train).ode_map()
    perm = torch.tensor([1, 0, 2, 3, 5, 4])  # swaps basins 0<->1 and 4<->5

    def copier(z):
        return train[perm[_nearest(emp(z), train)]]

    b = memorization_breakdown(pfd.OneStepMap(copier, shape=(2,)), train, n=512, seed=3, batch_size=100)
    z = pfd.canonical_noise(512, (2,), seed=3)
    basin = _nearest(emp(z), train)
    moved = perm[basin] != basin
    sq = (train[perm[basin]] - emp(z)).pow(2).sum(1)
    assert b.basin_agreement == pytest.approx(float((~moved).double().mean()), abs=0)
    assert 0.2 < b.basin_agreement < 0.9
    assert b.e_mem_switched == pytest.approx(float((sq * moved).mean().sqrt()), rel=1e-12)
    assert b.e_mem_same_basin == pytest.approx(float((sq * ~moved).mean().sqrt()), abs=1e-6)  # emp output ~ a point
    assert b.e_mem ** 2 == pytest.approx(b.e_mem_same_basin ** 2 + b.e_mem_switched ** 2, rel=1e-12)
    assert b.copy_fraction == 1.0
    lo, hi = b.basin_agreement_ci95
    assert lo < b.basin_agreement < hi and hi - lo < 0.1


def test_memorization_breakdown_of_an_offset_memorizer_matches_e_mem(teacher):
    """Empirical map plus a small constant offset: nothing switches, E_same = |offset| = E_mem,
    and E_mem equals generalization_errors' E_mem on the same noise."""
    from pfd.analysis import memorization_breakdown

    train = teacher.sample(8, seed=2)
    emp = pfd.GaussianMixture.empirical(train).ode_map()
    off = torch.tensor([0.03, -0.04], dtype=torch.float64)
    student = pfd.OneStepMap(lambda z: emp(z) + off, shape=(2,))
    b = memorization_breakdown(student, train, n=300, seed=1)
    assert b.basin_agreement == 1.0 and b.e_mem_switched == 0.0
    assert b.e_mem == pytest.approx(0.05, rel=1e-6)
    err = generalization_errors(student, teacher, train, n=300, seed=1)
    assert b.e_mem == pytest.approx(err.e_mem.value, rel=1e-9)
    far = pfd.OneStepMap(lambda z: emp(z) * 0.0 + 10.0, shape=(2,))  # never near a training point
    assert memorization_breakdown(far, train, n=64).copy_fraction < 0.5
    with pytest.raises(ValueError, match="train_set"):
        memorization_breakdown(student, train[:1], n=64)
    with pytest.raises(TypeError, match="student"):
        memorization_breakdown("not a map", train, n=64)
