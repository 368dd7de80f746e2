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
    assert bv.bias2 == pytest.approx((1 - a) ** 2 * float((mbar - mt).pow(2).sum()), rel=1e-12)
    assert bv.var == pytest.approx((1 - a) ** 2 * float((means - mbar).pow(2).sum(1).mean()), rel=1e-12)
    assert bv.e_gen == pytest.approx([(1 - a) * float((m - mt).norm()) for m in means], rel=1e-12)


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
