"""Tests of open_forgetting.losses: closed forms of the targets and weights, and the Drift Correction properties (00_method §3)."""
import copy, re

import pytest
import torch
import torch.nn.functional as F

from open_forgetting.core import data_path
from open_forgetting.losses import (training_target, min_snr_weights, denoising_loss, prior_preservation_loss,
                                    drift_correction_loss, teacher_prediction, noised_regularization_latents,
                                    regularization_prompts, load_generic_prompts)
from open_forgetting.models import tiny_components, sd_scheduler, encode_prompts



def _inputs(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 4, 8, 8, generator=g), torch.tensor([3, 400, 999])[:n]


@pytest.mark.parametrize('kind', ['epsilon', 'v_prediction'])
def test_training_target_closed_form(kind):
    z0, eps, t = _inputs()
    s = sd_scheduler(kind)
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = eps if kind == 'epsilon' else a.sqrt() * eps - (1 - a).sqrt() * z0
    torch.testing.assert_close(training_target(s, z0, eps, t), expected, rtol=1e-5, atol=1e-5)

def test_unknown_prediction_type_is_refused():
    s = sd_scheduler('epsilon'); s.register_to_config(prediction_type='sample')
    z0, eps, t = _inputs()
    with pytest.raises(ValueError, match="'epsilon' or 'v_prediction'"): training_target(s, z0, eps, t)

@pytest.mark.parametrize('kind', ['epsilon', 'v_prediction'])
def test_min_snr_weights_closed_form(kind):
    s = sd_scheduler(kind); t = torch.arange(0, 1000, 37)
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    den = snr + 1 if kind == 'v_prediction' else snr
    torch.testing.assert_close(min_snr_weights(s, t, 5.0), torch.minimum(snr, torch.tensor(5.0)) / den, rtol=1e-4, atol=1e-6)

def test_denoising_loss_is_mse_and_weighting_is_per_sample():
    p, q, t = _inputs(1)
    s = sd_scheduler()
    torch.testing.assert_close(denoising_loss(p, q), F.mse_loss(p, q))
    torch.testing.assert_close(prior_preservation_loss(p, q), F.mse_loss(p, q))
    w = min_snr_weights(s, t, 5.0)
    per = ((p - q) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(denoising_loss(p, q, t, s, 5.0), (per * w).mean())
    with pytest.raises(ValueError, match='needs the timesteps'): denoising_loss(p, q, snr_gamma=5.0)

def test_regularization_sources():
    pool = load_generic_prompts()
    assert regularization_prompts('generic') == pool
    assert regularization_prompts('generic', generic=['x']) == ['x']
    assert regularization_prompts('empty') == ['']
    assert regularization_prompts('class', 'a photo of a dog') == ['a photo of a dog']
    with pytest.raises(ValueError, match='class noun'): regularization_prompts('class')
    with pytest.raises(ValueError, match="'generic'"): regularization_prompts('concept')

def test_generic_pool_is_large_distinct_reproducible_and_concept_free():
    import csv, runpy
    pool = load_generic_prompts()
    assert len(pool) >= 500 and len(set(pool)) == len(pool)
    script = runpy.run_path(str(data_path('..', 'tools', 'make_generic_prompts.py').resolve()))
    assert script['generic_prompts']() == pool                 # the shipped file is the script's output
    with open(data_path('concepts', 'dreambench.csv')) as f: rows = list(csv.DictReader(f))
    banned = {w for r in rows for w in re.split(r'[_\s]+', r['subject'] + ' ' + r['class_noun'])}
    banned = {re.sub(r'\d+$', '', w) for w in banned} | {'sunglasses', 'plushie', 'shoe'}
    words = {w for p in pool for w in re.findall(r'[a-z]+', p.lower())}
    assert not (words & banned), words & banned

def test_noised_regularization_latents():
    s = sd_scheduler(); z0, _, _ = _inputs(2, 2)
    zt, t = noised_regularization_latents(s, z0, 5, torch.Generator().manual_seed(0))
    assert zt.shape == (5, 4, 8, 8) and ((t >= 0) & (t < 1000)).all()
    # same generator state -> same draw; the n > len(clean) case cycles through the clean latents
    zt2, t2 = noised_regularization_latents(s, z0, 5, torch.Generator().manual_seed(0))
    assert torch.equal(zt, zt2) and torch.equal(t, t2)
    zn, tn = noised_regularization_latents(s, None, 3, torch.Generator().manual_seed(0), shape=(4, 8, 8), pure_noise=True)
    assert (tn == 999).all() and torch.equal(zn, torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match='shape'): noised_regularization_latents(s, None, 1, torch.Generator(), pure_noise=True)

def _reg_batch(c, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = encode_prompts(c, ['a photo of', 'a blurry photo of', '', 'a photo of'][:n]).clone()
    zt, t = noised_regularization_latents(c.scheduler, torch.randn(n, 4, 16, 16, generator=g), n, g)
    return zt, t, emb

def test_dc_exactly_zero_for_identical_models_and_no_teacher_gradient(small):
    teacher = copy.deepcopy(small.unet).requires_grad_(False)
    student = copy.deepcopy(small.unet).requires_grad_(True)
    zt, t, emb = _reg_batch(small)
    assert drift_correction_loss(student, teacher, zt, t, emb).item() == 0.0
    with torch.no_grad():
        for p in student.parameters(): p.add_(0.01 * torch.randn_like(p))
    loss = drift_correction_loss(student, teacher, zt, t, emb)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())

def test_dc_with_precomputed_student_prediction_equals_the_direct_route(small):
    teacher = copy.deepcopy(small.unet); student = copy.deepcopy(small.unet)
    with torch.no_grad(): student.conv_out.bias.add_(0.05)
    zt, t, emb = _reg_batch(small)
    pred = student(zt, t, encoder_hidden_states=emb).sample
    assert drift_correction_loss(None, teacher, zt, t, emb, student_pred=pred) == drift_correction_loss(student, teacher, zt, t, emb)

def test_teacher_runs_in_its_own_dtype(small):
    teacher = copy.deepcopy(small.unet).to(torch.bfloat16)
    zt, t, emb = _reg_batch(small, 2)
    out = teacher_prediction(teacher, zt, t, emb)
    assert out.dtype == torch.bfloat16 and not out.requires_grad

def test_training_on_dc_alone_pulls_a_perturbed_model_back(small):
    "Minimising L_DC over fresh regularization samples moves the student's outputs toward the frozen teacher's on held-out inputs."
    teacher = copy.deepcopy(small.unet).requires_grad_(False)
    student = copy.deepcopy(small.unet).requires_grad_(True)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters(): p.add_(0.05 * torch.randn_like(p))
    held_zt, held_t, held_emb = _reg_batch(small, 4, seed=123)

    def distance():
        with torch.no_grad(): return drift_correction_loss(student, teacher, held_zt, held_t, held_emb).item()

    before = distance()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for step in range(30):
        zt, t, emb = _reg_batch(small, 4, seed=step)
        loss = drift_correction_loss(student, teacher, zt, t, emb)
        opt.zero_grad(); loss.backward(); opt.step()
    after = distance()
    assert after < 0.5 * before, (before, after)


# ---- the teacher cache [ours]
def test_cached_teacher_gives_the_live_teachers_loss_on_the_same_samples(small):
    from open_forgetting.losses import TeacherPool, teacher_pool
    teacher = copy.deepcopy(small.unet).requires_grad_(False)
    student = copy.deepcopy(small.unet)
    with torch.no_grad(): student.conv_out.bias.add_(0.05)
    g = torch.Generator().manual_seed(0)
    emb = encode_prompts(small, ['a photo of', '']).clone()
    zt, t = noised_regularization_latents(small.scheduler, torch.randn(5, 4, 16, 16, generator=g), 5, g)
    idx = torch.tensor([0, 1, 1, 0, 1])
    pool = teacher_pool(teacher, zt, t, idx, emb, batch_size=2)
    one_by_one = teacher_pool(teacher, zt, t, idx, emb, batch_size=1)
    torch.testing.assert_close(pool.target, one_by_one.target)        # batching the teacher does not change it
    z, tt, i, target = pool.draw(4, torch.Generator().manual_seed(1))
    live = drift_correction_loss(student, teacher, z, tt, emb[i])
    cached = drift_correction_loss(student, None, z, tt, emb[i], teacher_pred=target)
    torch.testing.assert_close(cached, live)
    # the draw is uniform with replacement from one generator: the same seed draws the same samples
    assert torch.equal(pool.draw(4, torch.Generator().manual_seed(1))[0], z)
    with pytest.raises(ValueError, match='same non-zero'): TeacherPool(zt, t[:1], idx, zt)
