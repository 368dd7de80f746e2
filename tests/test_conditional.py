"""Class-conditional mixtures, classifier-free guidance and conditions through the PFD pipeline."""

from __future__ import annotations

import math

import pytest
import torch
from _models import tiny_unet

import pfd
from pfd.analytic import ConditionalGaussianMixture


def _cgmm(cov_kind: str = "full") -> ConditionalGaussianMixture:
    g = torch.Generator().manual_seed(3)
    k, d = 5, 3
    means = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    if cov_kind == "iso":
        covs = 0.1 + torch.rand(k, generator=g, dtype=torch.float64)
    else:
        a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
        covs = a @ a.transpose(1, 2) / d + 0.05 * torch.eye(d, dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    return ConditionalGaussianMixture(weights, means, covs, labels=[0, 1, 0, 2, 1])


@pytest.mark.parametrize("kind", ["iso", "full"])
def test_conditional_denoiser_is_the_renormalised_class_submixture(kind):
    cg = _cgmm(kind)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for c, comps in {0: [0, 2], 1: [1, 4], 2: [3]}.items():
        w = cg.mixture.weights[comps]
        ref = pfd.GaussianMixture(w / w.sum(), cg.mixture.means[comps], cg.mixture.covs[comps])
        for sigma in (0.05, 1.0, 20.0):
            got = cg.denoiser(x, sigma, labels=torch.full((40,), c))
            torch.testing.assert_close(got, ref.denoiser(x, sigma), rtol=1e-12, atol=1e-12)
    assert cg.class_probs.tolist() == pytest.approx([0.4, 0.45, 0.15], abs=1e-15)


def test_unconditional_is_the_class_posterior_average_of_conditionals():
    """Bayes: D_u(x) = sum_c P(c | x_sigma) D_c(x), P(c | x) ∝ P(c) p_sigma(x | c)."""
    cg = _cgmm()
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for sigma in (0.1, 1.5):
        logp = torch.stack([math.log(float(p)) + cg.class_mixture(c).log_prob(x, sigma)
                            for c, p in zip(cg.classes, cg.class_probs, strict=True)], 1)
        post = torch.softmax(logp, 1)
        conds = torch.stack([cg.denoiser(x, sigma, labels=c) for c in cg.classes], 1)
        torch.testing.assert_close((post[:, :, None] * conds).sum(1), cg.denoiser(x, sigma), rtol=1e-10, atol=1e-10)


def test_guidance_convention():
    cg = _cgmm()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lab = torch.tensor([0, 1, 2, 1] * 4)
    d_u = cg.denoiser(x, 0.7)
    d_c = cg.denoiser(x, 0.7, labels=lab)
    torch.testing.assert_close(cg.denoiser(x, 0.7, labels=lab, guidance=0.0), d_c)
    torch.testing.assert_close(cg.denoiser(x, 0.7, labels=lab, guidance=-1.0), d_u, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(cg.denoiser(x, 0.7, labels=lab, guidance=3.0), d_u + 4.0 * (d_c - d_u))
    s = cg.score(x, 0.7, labels=lab, guidance=3.0)
    torch.testing.assert_close(s, (d_u + 4.0 * (d_c - d_u) - x) / 0.49)


def test_bad_inputs_are_named():
    cg = _cgmm()
    x = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="guidance needs labels"):
        cg.denoiser(x, 1.0, guidance=2.0)
    with pytest.raises(ValueError, match="class 7"):
        cg.denoiser(x, 1.0, labels=7)
    with pytest.raises(TypeError, match="labels must hold integer"):
        cg.denoiser(x, 1.0, labels=torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        cg.denoiser(x, 1.0, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="guidance"):
        cg.denoiser(x, 1.0, labels=0, guidance="3")
    with pytest.raises(ValueError, match="labels must be"):
        ConditionalGaussianMixture([1.0, 1.0], [[0.0], [1.0]], [0.1, 0.1], labels=[0])


def test_class_samples_have_the_class_moments():
    cg = _cgmm()
    x = cg.sample(20000, seed=0, labels=2)  # class 2 is one Gaussian component
    torch.testing.assert_close(x.mean(0), cg.mixture.means[3], atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cg.mixture.component_covs()[3], atol=0.05, rtol=0)


def test_from_classes_round_trip():
    a = pfd.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 0.0]], [0.2, 0.3])
    b = pfd.GaussianMixture([1.0], [[0.0, 4.0]], [0.5])
    cg = ConditionalGaussianMixture.from_classes([a, b], [0.75, 0.25], labels=[3, 8])
    assert cg.classes == [3, 8]
    assert cg.class_probs.tolist() == pytest.approx([0.75, 0.25])
    x = torch.randn(8, 2, dtype=torch.float64)
    torch.testing.assert_close(cg.denoiser(x, 0.4, labels=3), a.denoiser(x, 0.4))


def test_guided_ode_maps_match_submixture_and_unconditional_maps():
    cg = _cgmm()
    z = pfd.canonical_noise(64, (3,), seed=4)
    lab = pfd.noise.canonical_labels(64, cg.class_probs, seed=4)
    cond = cg.ode_map(guidance=0.0, solver="heun", steps=24)
    assert cond.conditional
    x = cond(z, lab)
    for c in cg.classes:
        idx = lab == c
        ref = cg.class_mixture(c).ode_map(solver="heun", steps=24)(z[idx])
        torch.testing.assert_close(x[idx], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cg.ode_map(labels=c, steps=24)(z[idx]), ref, rtol=1e-12, atol=1e-12)
    unc = cg.ode_map(guidance=-1.0, steps=24)(z, lab)
    torch.testing.assert_close(unc, cg.mixture.ode_map(steps=24)(z), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="is conditional"):
        cond(z)
    with pytest.raises(ValueError, match="not conditional"):
        cg.mixture.ode_map()(z, lab)


def test_canonical_labels_do_not_depend_on_chunking():
    src = pfd.noise.LabelSource(seed=5, probs=[0.1, 0.6, 0.3])
    full = src.get(0, 3000)
    parts = torch.cat([src.get(a, min(a + 700, 3000)) for a in range(0, 3000, 700)])
    assert torch.equal(full, parts)
    freq = torch.bincount(full, minlength=3).double() / 3000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="sum to 1"):
        pfd.noise.LabelSource(0, [0.5, 0.6])


# ---------------------------------------------------------------- adapters
def test_edm_adapter_with_guidance_reproduces_the_analytic_guided_denoiser_and_map():
    cg = _cgmm()

    def net(x, sigma, c):  # a conditional "model": class -1 is the null (unconditional) input
        if bool((c == -1).all()):
            return cg.denoiser(x, sigma)
        return cg.denoiser(x, sigma, labels=c)

    den = pfd.adapters.EDMDenoiser(net, condition="c", guidance=3.0, null_condition=-1)
    assert den.conditional
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    lab = torch.tensor([0, 1, 2] * 4)
    torch.testing.assert_close(den(x, 0.8, lab), cg.denoiser(x, 0.8, labels=lab, guidance=3.0), rtol=1e-13, atol=1e-13)
    m = pfd.DiffusionMap(den, shape=(3,), steps=12)
    assert m.conditional  # inferred from the adapter
    z = pfd.canonical_noise(12, (3,), seed=1)
    torch.testing.assert_close(m(z, lab), cg.ode_map(guidance=3.0, steps=12)(z, lab), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="null_condition"):
        pfd.adapters.EDMDenoiser(net, condition="c", guidance=1.0)
    with pytest.raises(ValueError, match="needs a conditional model"):
        pfd.adapters.EDMDenoiser(net, guidance=1.0, null_condition=-1)
    with pytest.raises(ValueError, match="is conditional"):
        den(x, 0.8)


def _tiny_class_unet(n_classes=4):
    diffusers = pytest.importorskip("diffusers")

    def init(unet):
        for p in unet.class_embedding.parameters():  # untrained embeddings start at zero-ish scale
            p.data.normal_(0.0, 1.0)

    # the last class id is the null class used for guidance
    unet = tiny_unet(init=init, num_class_embeds=n_classes + 1)
    return diffusers, unet, diffusers.DDPMScheduler(num_train_timesteps=1000)


def test_class_conditional_diffusers_unet_cfg_ddim_equals_conditional_euler_gridmap():
    """diffusers-style CFG DDIM (eps = eps_u + s (eps_c - eps_u), s = 1 + w) == pfd's guided GridMap."""
    diffusers, unet, sched = _tiny_class_unet()
    ddim = diffusers.DDIMScheduler.from_config(sched.config, clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(5)
    w = 2.0
    z = pfd.canonical_noise(6, (1, 8, 8), seed=2)
    lab = torch.tensor([0, 1, 2, 3, 0, 1])
    null = torch.full_like(lab, 4)
    x = z.float()
    with torch.no_grad():
        for t in ddim.timesteps:
            e_c = unet(x, t, class_labels=lab).sample
            e_u = unet(x, t, class_labels=null).sample
            x = ddim.step(e_u + (1 + w) * (e_c - e_u), t, x, eta=0.0).prev_sample
    den = pfd.adapters.diffusers_denoiser(unet, sched, timesteps="nearest", condition="class_labels",
                                          guidance=w, null_condition=4)
    grid = pfd.adapters.vp_sigmas(sched.alphas_cumprod)[ddim.timesteps.long()]
    m = pfd.adapters.GridMap(den, grid, solver="euler", start="vp", shape=(1, 8, 8))
    assert m.conditional
    ours = m(z, lab)
    assert float((ours - x.double()).abs().max()) <= 1e-4 * float(ours.abs().max())
    # the condition matters: other labels give other outputs
    assert float((m(z, (lab + 1) % 4) - ours).abs().max()) > 1e-3


def test_text_conditional_unet_takes_encoder_hidden_states():
    diffusers = pytest.importorskip("diffusers")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=12, norm_num_groups=4, attention_head_dim=4,
        ).eval()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    emb = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(0))
    null = torch.zeros(1, 5, 12)
    den = pfd.adapters.diffusers_denoiser(unet, sched, condition="encoder_hidden_states", guidance=1.5, null_condition=null)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    plain = pfd.adapters.diffusers_denoiser(unet, sched, condition="encoder_hidden_states")
    with torch.no_grad():
        d = den(x, 2.0, emb)
        d_c, d_u = plain(x, 2.0, emb), plain(x, 2.0, null.expand(3, 5, 12))
    torch.testing.assert_close(d, d_u + 2.5 * (d_c - d_u))
    assert float((d_c - d_u).abs().max()) > 1e-4


def test_conditional_students_take_the_condition():
    """One Gaussian per class: the exact class flow map is affine, so conditional students are exact."""
    mu = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    v = torch.tensor([0.2, 0.5, 0.1], dtype=torch.float64)
    cg = ConditionalGaussianMixture([0.3, 0.3, 0.4], mu, v, labels=[0, 1, 2])

    def jump(x, t, s, c):
        m, var = mu[c], v[c][:, None]
        return m + (x - m) * ((var + s[:, None] ** 2) / (var + t[:, None] ** 2)).sqrt()

    fm = pfd.adapters.FlowMapStudent(jump, grid=[80.0, 2.0, 0.0], shape=(2,), conditional=True)
    z = pfd.canonical_noise(30, (2,), seed=3)
    lab = pfd.noise.canonical_labels(30, 3, seed=3)
    exact = mu[lab] + (80.0 * z - mu[lab]) * (v[lab][:, None] / (v[lab][:, None] + 6400.0)).sqrt()
    torch.testing.assert_close(fm(z, lab), exact, rtol=1e-12, atol=1e-12)
    assert fm.describe()["conditional"] is True
    cm = pfd.adapters.ConsistencyStudent(lambda x, s, c: cg.denoiser(x, s, labels=c), 80.0, shape=(2,), conditional=True)
    torch.testing.assert_close(cm(z, lab), cg.denoiser(80.0 * z, 80.0, labels=lab))
    g = pfd.adapters.GeneratorStudent(lambda z, c: mu[c] + z, kind="trajectory", shape=(2,), conditional=True)
    torch.testing.assert_close(g(z, lab), mu[lab] + z)
    with pytest.raises(ValueError, match="is conditional"):
        fm(z)


def test_digits_conditional_teacher():
    cg = pfd.analytic.digits_conditional_teacher()
    y = pfd.analytic.digits_labels()
    freq = torch.bincount(y, minlength=10).double() / y.numel()
    torch.testing.assert_close(cg.class_probs, freq, rtol=1e-12, atol=1e-12)
    x = pfd.analytic.digits_images()
    # each image is far more likely under its own class than on average under the others
    logp = torch.stack([cg.class_mixture(c).log_prob(x[:300]) for c in range(10)], 1)
    acc = float((logp.argmax(1) == y[:300]).double().mean())
    assert acc > 0.95
    s = cg.sample(8, seed=0, labels=torch.arange(8))
    assert s.shape == (8, 1, 8, 8)


# ---------------------------------------------------------------- conditions through pfd.distance
def test_distance_with_labels_per_class_breakdown_and_identities():
    cg = _cgmm("iso")
    teacher = cg.ode_map(guidance=0.0, steps=12)
    shifted = ConditionalGaussianMixture(cg.mixture.weights, cg.mixture.means + 0.3, cg.mixture.covs, cg.component_labels)
    student = shifted.ode_map(guidance=0.0, steps=12)
    probs = cg.class_probs
    r = pfd.distance(teacher, student, n=600, seed=2, labels=probs, progress=False)
    rb = pfd.distance(teacher, student, n=600, seed=2, labels=probs, by_label=True, batch_size=128, progress=False)
    assert r.value == rb.value and r.by_label is None  # the breakdown does not change the overall value
    assert sum(v["n"] for v in rb.by_label.values()) == 600
    # per-class PFD^2 averaged with the class counts is the overall PFD^2
    pooled = sum(v["n"] * v["mean_sq"] for v in rb.by_label.values()) / 600
    assert pooled == pytest.approx(rb.mean_sq, rel=1e-12)
    # the same with explicit labels and noise, computed by hand per class
    z = pfd.canonical_noise(600, (3,), seed=2)
    lab = pfd.noise.canonical_labels(600, probs, seed=2)
    re = pfd.distance(teacher, student, noise=z, labels=lab, by_label=True, progress=False)
    assert re.value == rb.value
    for c in cg.classes:
        idx = lab == c
        d2 = (cg.class_mixture(c).ode_map(steps=12)(z[idx]) - shifted.class_mixture(c).ode_map(steps=12)(z[idx]))
        assert re.by_label[c]["value"] == pytest.approx(float(d2.pow(2).sum(1).mean().sqrt()), rel=1e-10)
    assert rb.to_dict()["by_label"]["0"]["n"] == rb.by_label[0]["n"]
    assert rb.provenance["labels"]["kind"] == "canonical"


def test_distance_label_errors_and_unconditional_partner():
    cg = _cgmm("iso")
    cond = cg.ode_map(steps=8)
    with pytest.raises(ValueError, match="map a is conditional"):
        pfd.distance(cond, cond, n=8, progress=False)
    unc = cg.class_mixture(1).ode_map(steps=8)
    with pytest.raises(ValueError, match="neither map is conditional"):
        pfd.distance(unc, unc, n=8, labels=3, progress=False)
    with pytest.raises(ValueError, match="one label per noise row"):
        pfd.distance(cond, unc, n=8, labels=torch.zeros(5, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="sum to 1"):
        pfd.distance(cond, unc, n=8, labels=[0.5, 0.6], progress=False)
    # a class-1 conditional map against the class-1 sub-mixture's plain map: zero distance
    r = pfd.distance(cond, unc, n=64, labels=torch.ones(64, dtype=torch.long), progress=False)
    assert r.value == 0.0
    emb = torch.randn(8, 4)
    with pytest.raises(ValueError, match="by_label=True needs class-id labels"):
        pfd.distance(cond, unc, n=8, labels=emb, by_label=True, progress=False)


def test_labels_do_not_change_the_noise_and_are_batch_invariant():
    cg = _cgmm("iso")
    m = cg.ode_map(steps=6)
    r1 = pfd.distance(m, cg.ode_map(guidance=1.0, steps=6), n=300, labels=3, batch_size=300, progress=False)
    r2 = pfd.distance(m, cg.ode_map(guidance=1.0, steps=6), n=300, labels=3, batch_size=64, progress=False)
    assert r1.value == r2.value


def test_monitor_and_metric_share_labels_with_the_reference():
    from pfd.integrations.metric import PFDMetric

    cg = _cgmm("iso")
    teacher = cg.ode_map(steps=8)
    student = cg.ode_map(guidance=1.0, steps=8)
    ref = pfd.distance(teacher, student, n=96, seed=3, labels=cg.class_probs, batch_size=32, progress=False)
    mon = pfd.PFDMonitor(teacher, n=96, seed=3, every=1, batch_size=32, labels=cg.class_probs)
    rec = mon.evaluate(student, step=1)
    assert rec["pfd"] == ref.value
    rec2 = mon.evaluate(student, step=2)  # served from the bank
    assert rec2["pfd"] == ref.value and mon._ref_map.hits > 0
    metric = PFDMetric(teacher, n=96, seed=3, batch_size=32, labels=cg.class_probs)
    metric.update(student)
    assert float(metric.compute()) == ref.value
    # the tensor path: the user runs the student on metric.noise / metric.labels
    metric.reset()
    metric.update(student(metric.noise(0, 96), metric.labels(0, 96)), start=0)
    assert float(metric.compute()) == pytest.approx(ref.value, rel=1e-12)
    with pytest.raises(ValueError, match="reference is conditional"):
        pfd.PFDMonitor(teacher, n=16)


def test_guidance_benchmark_pieces_on_a_tiny_mixture():
    """The study's code (benchmarks/guidance.py) on a 3-D, 3-class mixture, in a second."""
    from _scripts import load_script

    bench = load_script("benchmarks/guidance.py", "guidance_bench")
    cg = _cgmm("iso")
    rows = bench.solver_error_curve(cg, 1.0, [4, 16], n=32, seed=0)
    assert rows[0]["solver"] == "dopri5" and rows[1]["pfd_vs_ref"] > rows[2]["pfd_vs_ref"] > 0
    teacher = cg.ode_map(steps=8)
    bench.CLASS = 2
    collapse = bench.broken(teacher, cg, "collapse")
    mirror = bench.broken(teacher, cg, "mirror")
    r_c = pfd.distance(collapse, teacher, n=200, labels=cg.class_probs, by_label=True, progress=False)
    r_m = pfd.distance(mirror, teacher, n=200, labels=cg.class_probs, by_label=True, progress=False)
    assert r_c.by_label[0]["value"] == 0.0 and r_c.by_label[2]["value"] > 0.1
    assert r_m.by_label[1]["value"] == 0.0 and r_m.by_label[2]["value"] > 0.1
    # class 2 is one Gaussian: its map is affine, so the mirrored coupling has the same law (FD ~ 0)
    m = bench.class_metrics(teacher, mirror, cg.class_probs, 400, 0, shape=(3,))
    assert m[2]["fd"] < 0.05 * r_m.by_label[2]["mean_sq"]


# ---------------------------------------------------------------- pfd score
_FACTORY = '''
import torch
import pfd

CG = pfd.ConditionalGaussianMixture([0.3, 0.3, 0.4], [[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], [0.2, 0.5, 0.1],
                                    labels=[0, 1, 2])


class Teacher(torch.nn.Module):
    event_shape = (2,)

    def forward(self, x, sigma, c=None):  # exact conditional denoiser; class -1 is the null input
        if bool((c == -1).all()):
            return CG.denoiser(x, sigma)
        return CG.denoiser(x, sigma, labels=c)


def teacher():
    return Teacher()
'''


def test_score_cli_with_labels_guidance_and_per_class_table(tmp_path, capsys):
    import json
    import sys

    from pfd.cli import main

    (tmp_path / "cond_models.py").write_text(_FACTORY)
    spec = f"{tmp_path / 'cond_models.py'}:teacher"
    common = ["--reference", spec, "--student", spec, "--reference-schedule", "condition=\"c\"",
              "--reference-schedule", "null_condition=-1", "--student-schedule", "condition=\"c\"",
              "--n", "200", "--steps", "8", "--no-progress"]
    rc = main(["score", *common, "--guidance", "2", "--labels", "[0.3, 0.3, 0.4]", "--by-label", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rep = json.loads(out.out)
    sys.path.insert(0, str(tmp_path))
    try:
        import cond_models
    finally:
        sys.path.remove(str(tmp_path))
    cg = cond_models.CG
    ref = pfd.distance(cg.ode_map(guidance=2.0, steps=8), cg.ode_map(steps=8), n=200, labels=[0.3, 0.3, 0.4],
                       progress=False)
    assert rep["value"] == pytest.approx(ref.value, rel=1e-9)
    assert rep["provenance"]["labels"]["kind"] == "canonical"
    # explicit labels from a file, and the table shows one row per class
    torch.save(torch.tensor([0, 1, 2, 1] * 50), tmp_path / "labels.pt")
    assert main(["score", *common, "--guidance", "2", "--labels", str(tmp_path / "labels.pt"), "--by-label"]) == 0
    table = capsys.readouterr().out
    assert "label" in table and table.count("\n") > 8
    # errors are one line naming the option
    assert main(["score", *common]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["score", *common, "--labels", "nonsense"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["score", *common, "--guidance", "1", "--reference-schedule", "guidance=1", "--labels", "3"]) == 2
    assert "--guidance" in capsys.readouterr().err


def test_conditional_digits_teacher_is_in_the_registry_and_refused_by_the_analyses(capsys, tmp_path):
    from pfd.analytic.teachers import get_teacher
    from pfd.cli import main

    cg = get_teacher("digits-conditional")
    assert isinstance(cg, ConditionalGaussianMixture) and cg.event_shape == (1, 8, 8)
    assert main(["mtog", "--teacher", "digits-conditional", "--out-dir", str(tmp_path)]) == 2
    assert "conditional teacher" in capsys.readouterr().err


def test_monitor_bank_serves_embedding_labels_from_the_bank():
    emb = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = pfd.OneStepMap(lambda z, e: z + e[:, :2], shape=(2,), conditional=True)
    student = pfd.OneStepMap(lambda z, e: 0.9 * z + e[:, 1:], shape=(2,), conditional=True)
    mon = pfd.PFDMonitor(ref, n=64, every=1, batch_size=32, labels=emb)
    direct = pfd.distance(ref, student, n=64, labels=emb, batch_size=32, progress=False).value
    assert mon.evaluate(student, step=1)["pfd"] == direct
    assert mon.evaluate(student, step=2)["pfd"] == direct
    assert mon._ref_map.hits == 4 and mon._ref_map.misses == 0  # every batch of both calls from the bank


def test_conditional_one_step_student_learns_the_class_maps():
    from pfd.distill.onestep import ONE_STEP_TRAIN, train_one_step_student

    cg = ConditionalGaussianMixture([0.3, 0.3, 0.4], [[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], [0.2, 0.2, 0.2],
                                    labels=[0, 1, 2])
    teacher = cg.ode_map(steps=12)
    student, hist = train_one_step_student(teacher, (2,), label_probs=cg.class_probs, n_train=2048,
                                           config=ONE_STEP_TRAIN.replace(train_steps=600, width=64, lr=3e-3, progress=False))
    assert student.conditional and hist["loss"][-1] < hist["loss"][0]
    res = pfd.distance(student, teacher, n=600, labels=cg.class_probs, by_label=True, progress=False)
    # the class maps are affine (one Gaussian per class): the student gets each within 0.3, while
    # the classes' means lie 4.2 to 6 apart, so a student ignoring the label would be off by > 2
    assert res.value < 0.3 and all(v["value"] < 0.4 for v in res.by_label.values())
    z = pfd.canonical_noise(200, (2,), seed=9)
    lab = pfd.canonical_labels(200, cg.class_probs, seed=9)
    assert float((student(z, lab) - student(z, (lab + 1) % 3)).norm(dim=1).mean()) > 3.0
