"""The zero-shot diffusion classifier: closed-form bookkeeping, an independent naive re-implementation, invariance to
batching / sharding / resuming, pairing across models, the drift report and clear errors."""
import copy, os, pickle, shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from open_forgetting.classifier import (ClassifierConfig, SCHEDULES, _load_result, accuracy, class_scores, classify,
                                        classify_latent, classify_latents, classify_models, confusion_matrix, drift_report,
                                        evaluations_per_image, fit_temperature, image_group_size, merge_shards,
                                        paired_noise, per_class_accuracy, predict_proba, preprocess_image, schedule_for,
                                        stage_timesteps, table1)
from open_forgetting.data import class_names, load_classification_dataset, load_prompts
from open_forgetting.core import cache_dir
from open_forgetting.models import encode_prompts, sd_scheduler, tiny_components

torch.set_num_threads(1)   # the tiny UNet is fastest single-threaded on the shared CI machine (pytest -n runs workers)

WORDS = ['a', 'photo', 'of', 'cat', 'dog', 'car']
PUBLISHED_EVALS = dict(cifar10=2750, stl10=3000, pets=2050, flowers=5590, food=5570, aircraft=5550, objectnet=14400,
                       imagenet=124500)   # 00_method §2 (Li et al.)


@pytest.fixture(scope='module')
def model():
    return tiny_components(seed=0, words=WORDS)


@pytest.fixture(scope='module')
def other_model():
    "A different model with the same VAE and text encoder (a 'customized' UNet)."
    m = tiny_components(seed=0, words=WORDS)
    with torch.no_grad():
        for p in m.unet.parameters(): p.add_(0.05 * torch.randn_like(p))
    return m


class Blobs(torch.utils.data.Dataset):
    "3 classes of noisy coloured images (float tensors in [0, 1])."
    classes = ['cat', 'dog', 'car']
    def __init__(self, n=4, name='blobs', fail_at=None):
        self.n, self.name, self.fail_at = n, name, fail_at
        self.targets = [i % 3 for i in range(n)]          # labels without decoding images
    @property
    def fingerprint(self): return 'blobs-v1'              # declared content identity: item i depends on i only
    def __len__(self): return self.n
    def __getitem__(self, i):
        if self.fail_at is not None and i == self.fail_at: raise KeyboardInterrupt('simulated interruption')
        x = torch.rand(3, 36, 40, generator=torch.Generator().manual_seed(i)) * 0.4
        x[i % 3] += 0.5
        return x.clamp(0, 1), i % 3


PROMPTS = pd.DataFrame(dict(prompt=['a photo of a cat', 'a photo of a dog', 'a photo of a car', 'a cat'],
                            classname=['cat', 'dog', 'car', 'cat'], classidx=[0, 1, 2, 0]))
SMALL = ClassifierConfig(to_keep=(2, 1), n_samples=(3, 6), loss='l1', batch_size=8)


class Counter:
    "Counts UNet sample evaluations (batch rows) through a forward pre-hook."
    def __init__(self, unet): self.n, self.calls = 0, 0; self.h = unet.register_forward_pre_hook(self, with_kwargs=True)
    def __call__(self, module, args, kwargs): self.n += args[0].shape[0]; self.calls += 1
    def __enter__(self): return self
    def __exit__(self, *a): self.h.remove()


# ---------- bookkeeping: evaluations per image ----------

def independent_eval_count(n_samples, to_keep, n_prompts, T=1000):
    "The reference's loops written out literally: grid, nested stages, prompts alive per stage."
    M = max(n_samples)
    t_to_eval = list(range(T // M // 2, T, T // M))[:M]
    evaluated, remaining, count = set(), n_prompts, 0
    for n, keep in zip(n_samples, to_keep):
        current = [t for t in t_to_eval[len(t_to_eval) // n // 2::len(t_to_eval) // n][:n] if t not in evaluated]
        count += len(current) * remaining
        evaluated.update(current); remaining = keep
    return count


class StubUNet(torch.nn.Module):
    "A cheap deterministic stand-in whose output depends on x_t, t and the prompt (for counting big schedules)."
    def __init__(self): super().__init__(); self.n = 0
    def forward(self, x, t, encoder_hidden_states):
        self.n += x.shape[0]
        return SimpleNamespace(sample=0.5 * x + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1) + 1e-4 * t.view(-1, 1, 1, 1))


@pytest.mark.parametrize('name', sorted(SCHEDULES))
def test_evaluations_per_image_closed_form(name):
    cfg = schedule_for(name, batch_size=4096)
    P = len(load_prompts(name))
    assert evaluations_per_image(cfg, P) == independent_eval_count(cfg.n_samples, cfg.to_keep, P) == PUBLISHED_EVALS[name]
    unet, n_eval = StubUNet(), sum(map(len, stage_timesteps(cfg.n_samples)))
    r = classify_latent(unet, torch.randn(1, 4, 2, 2), torch.randn(P, 3, 4), torch.randn(n_eval, 4, 2, 2),
                        sd_scheduler().alphas_cumprod, cfg)
    assert unet.n == PUBLISHED_EVALS[name]                       # actual UNet sample evaluations
    assert n_eval == max(cfg.n_samples) and sorted(r.timesteps) == sorted(set(r.timesteps))
    assert [len(p) for p in r.stage_prompts] == [P, *cfg.to_keep[:-1]]


def test_real_unet_evaluations_through_classify(model):
    cfg = ClassifierConfig(to_keep=(3, 2, 1), n_samples=(2, 4, 8), loss='l2', batch_size=5)
    with Counter(model.unet) as c:
        classify(model, Blobs(2), PROMPTS, cfg, cache=False, progress=False)
    assert c.n == 2 * independent_eval_count(cfg.n_samples, cfg.to_keep, len(PROMPTS)) == 2 * (2 * 4 + 4 * 3 + 2 * 2)
    assert c.calls == 2 * (2 + 3 + 1)                  # ceil(8/5) + ceil(12/5) + ceil(4/5) calls per image


# ---------- exactness: an independent naive implementation ----------

def naive_classify(unet, z0, emb, noise, alphas_cumprod, n_samples, to_keep, loss, prediction_type):
    "One UNet call per (prompt, timestep), plain Python lists, the reference's bookkeeping."
    T = len(alphas_cumprod); M = max(n_samples)
    grid = list(range(T // M // 2, T, T // M))[:M]
    order, errors, remaining = [], {p: {} for p in range(len(emb))}, list(range(len(emb)))
    for n, keep in zip(n_samples, to_keep):
        current = [t for t in grid[len(grid) // n // 2::len(grid) // n][:n] if t not in order]
        for p in remaining:
            for j, t in enumerate(current):
                eps = noise[len(order) + j][None]
                a = alphas_cumprod[t]
                x_t = z0 * a ** 0.5 + eps * (1 - a) ** 0.5
                out = unet(x_t, torch.tensor([t]), encoder_hidden_states=emb[p][None]).sample
                target = eps if prediction_type == 'epsilon' else a ** 0.5 * eps - (1 - a) ** 0.5 * z0
                d = out - target
                e = {'l1': d.abs(), 'l2': d ** 2, 'huber': torch.where(d.abs() < 1, 0.5 * d ** 2, d.abs() - 0.5)}[loss]
                errors[p][t] = float(e.mean())
        order += current
        means = [np.mean([errors[p][t] for t in order]) for p in remaining]
        remaining = [remaining[i] for i in sorted(range(len(remaining)), key=lambda i: means[i])[:keep]]
    return remaining[0], order, errors


@pytest.mark.parametrize('loss,prediction_type', [('l1', 'epsilon'), ('l2', 'v_prediction'), ('huber', 'epsilon')])
def test_matches_naive_reimplementation(loss, prediction_type):
    m = tiny_components(seed=1, words=WORDS, prediction_type=prediction_type)
    emb = encode_prompts(m, PROMPTS.prompt.tolist())
    z0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(4))      # an explicit noise tensor
    cfg = ClassifierConfig(to_keep=(2, 1), n_samples=(4, 8), loss=loss, batch_size=64)
    ours = classify_latent(m.unet, z0, emb, noise, m.scheduler.alphas_cumprod, cfg, prediction_type=m.prediction_type)
    pred, order, errors = naive_classify(m.unet, z0, emb, noise, m.scheduler.alphas_cumprod, cfg.n_samples, cfg.to_keep,
                                         loss, prediction_type)
    assert ours.pred_prompt == pred and ours.timesteps.tolist() == order
    E = ours.errors()
    for p in range(len(PROMPTS)):
        for k, t in enumerate(order):
            if t in errors[p]: assert E[p, k] == pytest.approx(errors[p][t], rel=2e-6, abs=1e-7)
            else: assert np.isnan(E[p, k])


# ---------- invariances: batching, sharding, resuming ----------

def _same(a, b):
    cols = ['position', 'image_id', 'label', 'pred', 'pred_prompt', 'correct']
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))
    np.testing.assert_allclose(np.stack(a.scores), np.stack(b.scores), rtol=1e-5)


def test_batching_does_not_change_predictions(model):
    runs = [classify(model, Blobs(4), PROMPTS, ClassifierConfig(to_keep=(2, 1), n_samples=(3, 6), batch_size=bs),
                     cache=False, progress=False) for bs in (1, 5, 1000)]
    _same(runs[0], runs[1]); _same(runs[0], runs[2])


def test_sharding_merges_to_single_process_result(model):
    single = classify(model, Blobs(5), PROMPTS, SMALL, cache=False, progress=False)
    shards = [classify(model, Blobs(5), PROMPTS, SMALL, cache=False, shard=(r, 3), progress=False) for r in range(3)]
    assert sorted(len(s) for s in shards) == [1, 2, 2]
    _same(merge_shards(shards), single)
    with pytest.raises(ValueError, match='overlap'): merge_shards([shards[0], shards[0]])
    # shards that share the cache (as accelerate-launched processes do): a later full run only reads
    for r in range(2): classify(model, Blobs(5, name='blobs-shard'), PROMPTS, SMALL, shard=(r, 2), progress=False)
    with Counter(model.unet) as c:
        merged = classify(model, Blobs(5, name='blobs-shard'), PROMPTS, SMALL, progress=False)
    assert c.n == 0
    _same(merged, single)


def test_resume_after_interruption(model):
    uncached = classify(model, Blobs(4), PROMPTS, SMALL, cache=False, progress=False)
    with pytest.raises(KeyboardInterrupt):
        classify(model, Blobs(4, name='blobs-resume', fail_at=2), PROMPTS, SMALL, progress=False)
    per_image = evaluations_per_image(SMALL, len(PROMPTS))
    with Counter(model.unet) as c:
        resumed = classify(model, Blobs(4, name='blobs-resume'), PROMPTS, SMALL, progress=False)
    assert c.n == 2 * per_image                                 # only images 2 and 3 were computed
    _same(resumed, uncached)


def test_changed_settings_never_reuse_results(model, other_model):
    ds = Blobs(2, name='blobs-keys')
    classify(model, ds, PROMPTS, SMALL, progress=False)
    class Recomputing(Exception): pass
    def stop(module, args, kwargs): raise Recomputing      # the first UNet call already says the cache was not reused
    def evals(m, cfg=SMALL, seed=0, prompts=PROMPTS):
        h = m.unet.register_forward_pre_hook(stop, with_kwargs=True)
        try: classify(m, ds, prompts, cfg, seed=seed, progress=False)
        except Recomputing: return 1
        finally: h.remove()
        return 0
    assert evals(model, ClassifierConfig(to_keep=(2, 1), n_samples=(3, 6), batch_size=3)) == 0   # batch size: reused
    assert evals(model, replace(SMALL, share_prefix=False, channels_last=True, workers=2)) == 0    # speed options: reused
    assert evals(model, ClassifierConfig(to_keep=(2, 1), n_samples=(3, 6), loss='l2')) > 0
    assert evals(model, ClassifierConfig(to_keep=(3, 1), n_samples=(3, 6))) > 0
    assert evals(model, seed=1) > 0
    assert evals(other_model) > 0
    assert evals(model, prompts=PROMPTS.assign(prompt=['a cat', 'a dog', 'a car', 'a photo of a cat'])) > 0



# ---------- several images per UNet call ----------

def _records(df):
    "The cached ImageResult of every row of a cached `classify` frame."
    folder = cache_dir('classifier', df.attrs['cache_key'])
    return [_load_result(folder / f'{i:08d}.npz')[0] for i in df.image_id]


def _same_records(a, b, rtol=1e-5):
    "Same prediction, timesteps and pruning per image; errors and scores equal up to float rounding."
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.pred_prompt == rb.pred_prompt and np.array_equal(ra.timesteps, rb.timesteps)
        assert all(np.array_equal(p, q) for p, q in zip(ra.stage_prompts, rb.stage_prompts))
        assert [e.shape for e in ra.stage_errors] == [e.shape for e in rb.stage_errors]
        np.testing.assert_allclose(ra.errors(), rb.errors(), rtol=rtol, atol=1e-7)
        np.testing.assert_allclose(ra.scores, rb.scores, rtol=rtol, atol=1e-7)


def test_classify_latents_is_classify_latent_per_image(model):
    emb = encode_prompts(model, PROMPTS.prompt.tolist())
    cfg = ClassifierConfig(to_keep=(3, 2, 1), n_samples=(2, 4, 8), loss='huber', batch_size=7)
    z = torch.randn(5, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    noises = torch.stack([paired_noise(0, i, 8, (4, 16, 16)) for i in range(5)])
    acp = model.scheduler.alphas_cumprod
    with Counter(model.unet) as together: grouped = classify_latents(model.unet, z, emb, noises, acp, cfg)
    with Counter(model.unet) as alone: single = [classify_latent(model.unet, z[i], emb, noises[i], acp, cfg) for i in range(5)]
    _same_records(grouped, single)
    assert together.n == alone.n == 5 * evaluations_per_image(cfg, len(PROMPTS))
    # stages of 2, 4, 2 new timesteps: 40, 60, 20 samples in batches of 7 vs 8, 12, 4 per image
    assert together.calls == 6 + 9 + 3 < alone.calls == 5 * (2 + 2 + 1)
    with pytest.raises(ValueError, match=r'noise must be \(5, 8, 4, 16, 16\)'):
        classify_latents(model.unet, z, emb, noises[:4], acp, cfg)
    with pytest.raises(ValueError, match='one latent'): classify_latent(model.unet, z, emb, noises[0], acp, cfg)


def test_image_groups_match_one_image_at_a_time(model):
    "Groups of 1, 3 (straddling the end) and the automatic size give the same per-image records, with fewer UNet calls."
    runs, calls = {}, {}
    for ipb in (1, 3, None):
        cfg = ClassifierConfig(to_keep=(2, 1), n_samples=(3, 6), batch_size=32, images_per_batch=ipb)
        with Counter(model.unet) as c:
            runs[ipb] = classify(model, Blobs(7, name=f'blobs-group-{ipb}'), PROMPTS, cfg, progress=False)
        calls[ipb] = c.calls
    assert image_group_size(cfg, len(PROMPTS)) == 32 // 12 == 2
    for ipb in (3, None):
        _same(runs[ipb], runs[1]); _same_records(_records(runs[ipb]), _records(runs[1]))
    assert calls[1] == 7 * 2 and calls[3] == 2 * 3 + 2 and calls[None] == 4 * 2   # 12 + 6 samples per image: a group of 1 or 2 takes 2 calls, of 3 takes 3


def test_resume_loses_at_most_the_group_in_flight(model):
    cfg = ClassifierConfig(to_keep=(2, 1), n_samples=(3, 6), batch_size=8, images_per_batch=2)
    uncached = classify(model, Blobs(6), PROMPTS, cfg, cache=False, progress=False)
    with pytest.raises(KeyboardInterrupt):   # images 0 and 1 done, image 3 fails while its group (2, 3) is loaded
        classify(model, Blobs(6, name='blobs-group-resume', fail_at=3), PROMPTS, cfg, progress=False)
    with Counter(model.unet) as c:
        resumed = classify(model, Blobs(6, name='blobs-group-resume'), PROMPTS, cfg, progress=False)
    assert c.n == 4 * evaluations_per_image(cfg, len(PROMPTS))
    _same(resumed, uncached)


def test_miniworld_image_groups_match_one_image_at_a_time():
    "The embedded miniworld model and preset schedule: 8 images per group (8 prompts x 4 timesteps = 32 samples each)."
    from open_forgetting.miniworld import load_miniworld_base, miniworld_dataset, miniworld_prompts
    base, prompts = load_miniworld_base(), miniworld_prompts('shape')
    ds = miniworld_dataset('shape', 'test', n_per_class=2)
    cfg = ClassifierConfig(to_keep=(2, 1), n_samples=(4, 12), batch_size=256)
    assert len(ds) == 16 and image_group_size(cfg, len(prompts)) == 8
    one = classify(base, ds, prompts, replace(cfg, images_per_batch=1), progress=False)
    folder = cache_dir('classifier', one.attrs['cache_key'])
    records_one = _records(one); shutil.rmtree(folder)            # the same key: recompute, grouped this time
    grouped = classify(base, ds, prompts, cfg, progress=False)
    assert grouped.attrs['cache_key'] == one.attrs['cache_key']
    _same(grouped, one); _same_records(_records(grouped), records_one)
    assert accuracy(grouped) > 100 / len(prompts)                 # a trained model: better than chance


# ---------- pairing across models ----------

def test_noise_is_paired_across_models(model, other_model):
    seen = {}
    for name, m in (('base', model), ('other', other_model)):
        inputs = []
        h = m.unet.register_forward_pre_hook(lambda mod, a, kw: inputs.append((a[0].clone(), a[1].clone())), with_kwargs=True)
        classify(m, Blobs(1, name='blobs-pair'), PROMPTS, ClassifierConfig(to_keep=(2, 1), n_samples=(3, 6), batch_size=100),
                 cache=False, progress=False)
        h.remove(); seen[name] = inputs
    x_base, t_base = seen['base'][0]; x_other, t_other = seen['other'][0]      # stage 1: every prompt, same (t, eps)
    assert torch.equal(x_base, x_other) and torch.equal(t_base, t_other)
    # and the x_t are q(x_t|x_0) with the documented noise, rebuilt here from (seed, image id)
    from open_forgetting.models import encode_images
    z0 = encode_images(model, preprocess_image(Blobs(1)[0][0], model.resolution)[None]).float()
    eps = paired_noise(0, 0, 6, z0.shape[1:])
    x0, t0 = x_base[::len(PROMPTS)], t_base[::len(PROMPTS)]                 # rows run (timestep, prompt): prompt 0's rows
    a = model.scheduler.alphas_cumprod[t0].view(-1, 1, 1, 1)
    torch.testing.assert_close(x0, z0 * a ** 0.5 + eps[:3] * (1 - a) ** 0.5)


def test_copy_of_base_gives_zero_drop(model, other_model):
    results = classify_models({'base': model, 'copy': copy.deepcopy(model), 'other': other_model}, Blobs(6),
                              PROMPTS, SMALL, cache=False, progress=False)
    rep = drift_report(results, n_boot=200)
    assert results['copy'].pred.tolist() == results['base'].pred.tolist()
    assert rep.loc['copy', ['drop', 'worst_drop', 'drop_lo', 'drop_hi', 'worst_drop_lo', 'worst_drop_hi']].abs().max() == 0
    assert rep.loc['other', 'drop'] == pytest.approx(accuracy(results['base']) - accuracy(results['other']))


# ---------- report ----------

def _frame(labels, preds, n_classes):
    df = pd.DataFrame(dict(image_id=np.arange(len(labels)), label=labels, pred=preds))
    df['correct'] = df.label == df.pred; df.attrs['classes'] = [f'c{i}' for i in range(n_classes)]
    return df


def test_drift_report_closed_forms():
    labels = np.repeat([0, 1, 2, 3], 10)
    base = _frame(labels, labels, 4)
    preds = labels.copy(); preds[:6] = 1; preds[10:12] = 0            # class 0 loses 6/10, class 1 loses 2/10
    model = _frame(labels, preds, 4)
    rep = drift_report({'base': base, 'db': model}, n_boot=500, seed=1)
    assert rep.loc['db', 'accuracy'] == pytest.approx(80.0) and rep.loc['db', 'drop'] == pytest.approx(20.0)
    assert rep.loc['db', 'worst_drop'] == pytest.approx(60.0) and rep.loc['db', 'worst_class'] == 0
    assert rep.loc['db', 'mean_class_drop'] == pytest.approx(20.0)
    assert rep.loc['db', 'drop_lo'] <= 20 <= rep.loc['db', 'drop_hi'] and rep.loc['db', 'drop_lo'] > 0
    assert rep.loc['db', 'worst_drop_lo'] <= 60 <= rep.loc['db', 'worst_drop_hi']
    pc = per_class_accuracy(model); assert pc.tolist() == [40.0, 80.0, 100.0, 100.0]
    cm = confusion_matrix(model); assert cm.loc['c0', 'c1'] == 6 and cm.values.trace() == 32
    text, numeric = table1({'cifar10': {'base': base, 'db': model}}, n_boot=50)
    assert text.loc['base', 'cifar10'] == '100.00' and text.loc['db', 'cifar10'] == '80.00 (60.00)'
    assert numeric.loc['db', ('cifar10', 'worst_drop')] == pytest.approx(60.0)
    with pytest.raises(ValueError, match='paired'): drift_report({'base': base, 'x': model.iloc[:5]})
    with pytest.raises(KeyError, match='base'): drift_report({'db': model})


def test_temperature_calibration_recovers_known_temperature():
    rng = np.random.default_rng(0); T0 = 0.02
    scores = rng.normal(1.0, 0.03, (4000, 5))
    p = predict_proba(scores, T0)
    labels = np.array([rng.choice(5, p=row) for row in p])
    T = fit_temperature(scores[:3000], labels[:3000])
    assert T == pytest.approx(T0, rel=0.2)
    nll = lambda t: -np.log(predict_proba(scores[3000:], t)[np.arange(1000), labels[3000:]]).mean()
    assert nll(T) < nll(1.0)                                          # better than the raw near-uniform softmax


def test_class_scores_take_best_prompt_per_class(model):
    res = classify(model, Blobs(3), PROMPTS, SMALL, cache=False, progress=False)
    cs = class_scores(res)
    s0 = np.stack([s[0] for s in res.scores])
    np.testing.assert_allclose(cs[:, 0], np.minimum(s0[:, 0], s0[:, 3])); np.testing.assert_allclose(cs[:, 1:], s0[:, 1:3])


# ---------- a fake CIFAR-10 in its real format, the shipped prompts ----------

def test_end_to_end_fake_cifar10(tmp_path):
    folder = tmp_path / 'cifar-10-batches-py'; folder.mkdir()
    rng = np.random.default_rng(0)
    batch = lambda n: {'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8), 'labels': [i % 10 for i in range(n)]}
    for f in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']: pickle.dump(batch(20), open(folder / f, 'wb'))
    pickle.dump({'label_names': class_names(load_prompts('cifar10'))}, open(folder / 'batches.meta', 'wb'))
    ds = load_classification_dataset('cifar10', tmp_path, n_per_class=1, verify_checksums=False, allow_pickle=True)
    prompts = load_prompts('cifar10')
    words = [w.strip('.') for p in prompts.prompt for w in p.split()]
    base, other = tiny_components(seed=0, words=words), tiny_components(seed=2, words=words)
    cfg = schedule_for('cifar10', n_samples=(2, 4), batch_size=64)
    res = classify_models({'base': base, 'other': other}, ds, prompts, cfg, progress=False)
    assert len(res['base']) == 10 and res['base'].image_ids.tolist() == ds.image_ids.tolist() if hasattr(res['base'], 'image_ids') else True
    assert res['base'].image_id.tolist() == ds.image_ids.tolist() and res['base'].label.tolist() == ds.labels.tolist()
    from open_forgetting.core import cache_dir
    run = cache_dir('classifier', res['base'].attrs['cache_key'])
    assert len(list(run.glob('*.npz'))) == 10 and (run / 'run.json').exists() and not list(run.glob('.*.tmp'))
    text, numeric = table1({'cifar10': res}, n_boot=20)
    assert text.shape == (2, 1) and '(' in text.loc['other', 'cifar10']


# ---------- clear errors ----------

def test_bad_inputs(model):
    emb = encode_prompts(model, PROMPTS.prompt.tolist())
    acp = model.scheduler.alphas_cumprod
    with pytest.raises(ValueError, match='noise must be'):
        classify_latent(model.unet, torch.randn(1, 4, 16, 16), emb, torch.randn(3, 4, 16, 16), acp, SMALL)
    with pytest.raises(ValueError, match='noise must be'):
        classify_latent(model.unet, torch.randn(1, 4, 16, 16), emb, torch.randn(6, 4, 8, 8), acp, SMALL)
    with pytest.raises(ValueError, match='exceeds'):
        classify_latent(model.unet, torch.randn(1, 4, 16, 16), emb[:1], torch.randn(6, 4, 16, 16), acp, SMALL)
    with pytest.raises(ValueError, match='10 classes but the dataset'):
        classify(model, Blobs(2), load_prompts('cifar10'), SMALL, progress=False)
    with pytest.raises(ValueError, match='rank'): classify(model, Blobs(2), PROMPTS, SMALL, shard=(2, 2), progress=False)
    with pytest.raises(ValueError, match='keep 1'): ClassifierConfig(to_keep=(2, 2), n_samples=(3, 6))
    with pytest.raises(ValueError, match='same'): ClassifierConfig(to_keep=(2, 1), n_samples=(3,))
    with pytest.raises(ValueError, match='non-increasing'): ClassifierConfig(to_keep=(1, 2, 1), n_samples=(3, 6, 9))
    with pytest.raises(ValueError, match='No schedule'): schedule_for('mnist')
    with pytest.raises(TypeError, match='PIL images'): preprocess_image(np.zeros((3, 4, 4)), 8)
    for bad in ('abc', -1, 1.5):
        with pytest.raises(ValueError, match='seed'): classify(model, Blobs(2), PROMPTS, SMALL, seed=bad, progress=False)
    with pytest.raises(TypeError, match='ClassifierConfig'): classify(model, Blobs(2), PROMPTS, dict(to_keep=(1,)), progress=False)
    with pytest.raises(ValueError, match='batch_size'): ClassifierConfig(batch_size='abc')
    with pytest.raises(ValueError, match='n_samples'): ClassifierConfig(to_keep=(1,), n_samples=('x',))


def test_preprocess_equals_reference_transform():
    from torchvision import transforms as V1
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    ref = V1.Compose([V1.Resize(32, interpolation=V1.InterpolationMode.BICUBIC), V1.CenterCrop(32),
                      lambda i: i.convert('RGB'), V1.ToTensor(), V1.Normalize([0.5], [0.5])])(img)
    assert torch.equal(preprocess_image(img, 32), ref)


# ---------- real data-parallel processes (torchrun + accelerate PartialState, CPU, gloo) ----------

LAUNCHED = '''
import os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_classifier import Blobs, PROMPTS, SMALL, WORDS
from open_forgetting.classifier import classify
from open_forgetting.models import tiny_components
df = classify(tiny_components(seed=0, words=WORDS), Blobs(5, name='blobs-launch'), PROMPTS, SMALL, progress=False)
df.drop(columns='scores').to_csv(os.path.join(sys.argv[1], f"rank{{os.environ['RANK']}}.csv"), index=False)
'''


@pytest.mark.slow     # spawns 2 processes (~1-2 min)
def test_two_launched_processes_merge_to_single_result(tmp_path, model):
    import subprocess, sys
    from pathlib import Path
    script = tmp_path / 'launched.py'; script.write_text(LAUNCHED.format(tests=str(Path(__file__).parent)))
    # torchrun (what `accelerate launch` runs for multi-GPU) sets RANK / WORLD_SIZE; classify uses accelerate's PartialState
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29517',
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = classify(model, Blobs(5), PROMPTS, SMALL, cache=False, progress=False).drop(columns='scores')
    for rank in (0, 1):   # every process returns the merged result
        got = pd.read_csv(tmp_path / f'rank{rank}.csv')
        pd.testing.assert_frame_equal(got, single, check_dtype=False)


# ---------- results you can trust: dataset identity, damaged files, non-finite models (issue 20) ----------

def test_each_split_gets_its_own_results():
    "miniworld 'test' then 'val' with the cache on: val's own numbers (equal to an uncached run), labels from the dataset."
    from open_forgetting.miniworld import load_miniworld_base, miniworld_dataset, miniworld_prompts
    base, prompts = load_miniworld_base(), miniworld_prompts('shape')
    cfg = ClassifierConfig(to_keep=(1,), n_samples=(2,), batch_size=64)
    test = classify(base, miniworld_dataset('shape', 'test', n_per_class=1), prompts, cfg, progress=False)
    val_ds = miniworld_dataset('shape', 'val', n_per_class=1)
    val, fresh = (classify(base, val_ds, prompts, cfg, cache=c, progress=False) for c in (True, False))
    assert val.attrs['cache_key'] != test.attrs['cache_key']
    np.testing.assert_array_equal(np.stack(val.scores), np.stack(fresh.scores))
    assert not np.array_equal(np.stack(val.scores), np.stack(test.scores))
    assert val.label.tolist() == list(val_ds.labels)
    seeded = classify(base, miniworld_dataset('shape', 'test', n_per_class=1, seed=5), prompts, cfg, progress=False)
    assert seeded.attrs['cache_key'] != test.attrs['cache_key']                # the world's seed changes the images


def _damage(path, how):
    data = path.read_bytes()
    if how == 'truncate': path.write_bytes(data[:len(data) // 2])
    elif how == 'flip':                                                         # flip bits in the middle (array data)
        b = bytearray(data); b[len(b) // 2] ^= 0xFF; path.write_bytes(bytes(b))
    elif how == 'flip-header': b = bytearray(data); b[40] ^= 0x01; path.write_bytes(bytes(b))
    elif how == 'empty': path.write_bytes(b'')


@pytest.mark.parametrize('how', ['truncate', 'flip', 'flip-header', 'empty'])
def test_damaged_cache_files_are_set_aside_and_recomputed(model, how):
    ds = Blobs(3, name=f'blobs-damage-{how}')
    clean = classify(model, ds, PROMPTS, SMALL, progress=False)
    folder = cache_dir('classifier', clean.attrs['cache_key'])
    victim = folder / '00000001.npz'; _damage(victim, how)
    with pytest.warns(UserWarning, match='00000001.npz'):
        with Counter(model.unet) as c: again = classify(model, ds, PROMPTS, SMALL, progress=False)
    assert c.n == evaluations_per_image(SMALL, len(PROMPTS))                      # only the damaged image recomputed
    _same(again, clean); np.testing.assert_array_equal(np.stack(again.scores), np.stack(clean.scores))
    assert len(list(folder.glob('00000001.npz.damaged-*'))) == 1
    _load_result(victim)                                                        # the new file verifies


def test_cache_file_of_another_image_is_not_used(model):
    ds = Blobs(3, name='blobs-swapped')
    clean = classify(model, ds, PROMPTS, SMALL, progress=False)
    folder = cache_dir('classifier', clean.attrs['cache_key'])
    shutil.copy(folder / '00000000.npz', folder / '00000001.npz')              # intact, but image 0's record (label 0)
    with pytest.warns(UserWarning, match='00000001.npz.*label'):
        again = classify(model, ds, PROMPTS, SMALL, progress=False)
    _same(again, clean)


def test_non_finite_unet_raises_naming_the_model(model):
    broken = copy.deepcopy(model)
    with torch.no_grad(): broken.unet.conv_out.weight.mul_(float('inf'))
    broken.source = 'broken-unet-folder'
    from open_forgetting.core import NonFiniteError
    with pytest.raises(NonFiniteError, match=r'custom \(broken-unet-folder\) returned .* stage 1'):
        classify(broken, Blobs(2), PROMPTS, SMALL, cache=False, progress=False, model_name='custom')


# ---------- speed options: identical predictions ----------

def test_speed_options_give_identical_predictions(model):
    ds = Blobs(6, name='blobs-speed')
    ref = classify(model, ds, PROMPTS, replace(SMALL, share_prefix=False), cache=False, progress=False)
    for opts in (dict(share_prefix=True), dict(channels_last=True), dict(share_prefix=True, channels_last=True),
                 dict(batch_size=None), dict(batch_size=5, images_per_batch=2), dict(workers=2),
                 dict(workers=3, batch_size=4, images_per_batch=3, channels_last=True)):
        got = classify(model, ds, PROMPTS, replace(SMALL, **opts), cache=False, progress=False)
        _same(got, ref)
        np.testing.assert_allclose(np.stack(got.scores), np.stack(ref.scores), rtol=1e-5, atol=1e-7)
    assert all(p.is_contiguous() for p in model.unet.parameters())            # channels-last undone after the run
    assert not any('forward' in vars(m) for m in model.unet.modules())         # prefix sharing undone


def test_compile_failure_falls_back_to_eager(model, monkeypatch):
    import open_forgetting.classifier as C
    def broken_compile(module, **kw):
        def run(*a, **k): raise RuntimeError('inductor: no C++ compiler')
        return run
    monkeypatch.setattr(C.torch, 'compile', broken_compile); C._COMPILED.clear()
    ref = classify(model, Blobs(2), PROMPTS, SMALL, cache=False, progress=False)
    with pytest.warns(UserWarning, match='torch.compile of the UNet failed'):
        got = classify(model, Blobs(2), PROMPTS, replace(SMALL, compile=True), cache=False, progress=False)
    _same(got, ref)
    C._COMPILED.clear()


@pytest.mark.slow     # inductor compile takes minutes on a busy CPU
def test_compiled_unet_gives_identical_predictions(model):
    ref = classify(model, Blobs(3), PROMPTS, SMALL, cache=False, progress=False)
    got = classify(model, Blobs(3), PROMPTS, replace(SMALL, compile=True), cache=False, progress=False)
    _same(got, ref)
