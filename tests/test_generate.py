"""Seeded, cached generation (issue 5): determinism, shared initial latents across models, cache keys, resume, errors."""
import os
from pathlib import Path

import pytest
import torch

import open_forgetting.generate as gen
from open_forgetting.core import load_json
from open_forgetting.generate import (GenerationSettings, generate, initial_latents, latent_shape, load_images, sample,
                                      save_png)
from open_forgetting.models import tiny_components

FAST = GenerationSettings(steps=2, batch_size=4)


@pytest.fixture(scope='module')
def other():
    return tiny_components(seed=1)


def test_same_seed_same_image_twice(tiny):
    a = sample(tiny, ['a photo of', 'a photo of'], [3, 4], FAST)
    b = sample(tiny, ['a photo of', 'a photo of'], [3, 4], FAST)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])                                # another seed, another image


def _first_unet_input(components, seed, settings):
    seen = []
    def hook(module, args, kwargs):
        if not seen: seen.append((args[0] if args else kwargs['sample']).detach().clone())
    h = components.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try: sample(components, ['a photo of'], [seed], settings)
    finally: h.remove()
    return seen[0]


@pytest.mark.parametrize('scheduler', ['ddim', 'dpm', 'euler'])
def test_different_models_start_from_the_identical_latent(tiny, other, scheduler):
    st = GenerationSettings(scheduler=scheduler, steps=2)
    assert tiny.fingerprint() != other.fingerprint()
    za, zb = _first_unet_input(tiny, 7, st), _first_unet_input(other, 7, st)
    assert torch.equal(za, zb)
    # and it is the seed's own CPU draw (scaled for the scheduler), duplicated for the two guidance branches
    sched = gen.make_scheduler(scheduler, tiny); sched.set_timesteps(2)
    z0 = sched.scale_model_input(initial_latents([7], latent_shape(tiny, st)) * sched.init_noise_sigma, sched.timesteps[0])
    torch.testing.assert_close(za, torch.cat([z0, z0]))


def test_initial_latent_independent_of_batch_and_model_shape_only():
    a = initial_latents([5, 6], (4, 8, 8))
    assert torch.equal(a[1], initial_latents([6], (4, 8, 8))[0])
    assert torch.equal(a[0], torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(5)))


def test_cache_hit_miss_and_resume(tiny, other, tmp_path, monkeypatch):
    calls = []
    real = gen.sample
    monkeypatch.setattr(gen, 'sample', lambda c, p, s, st, **kw: calls.append(len(p)) or real(c, p, s, st, **kw))
    prompts, seeds = ['a photo of', 'a blurry photo of'], [0, 1, 2]
    m = generate({'base': tiny, 'other': other}, prompts, seeds, FAST, root=tmp_path, progress=False)
    assert list(m.columns) == gen.MANIFEST_COLUMNS and len(m) == 12 and sum(calls) == 12
    assert set(m.fingerprint) == {tiny.fingerprint(), other.fingerprint()}
    assert all(Path(p).is_file() for p in m.path)
    # same request: every image comes from the cache
    calls.clear()
    m2 = generate({'base': tiny, 'other': other}, prompts, seeds, FAST, root=tmp_path, progress=False)
    assert calls == [] and m2.equals(m)
    # batch size does not key the cache
    generate({'base': tiny}, prompts, seeds, GenerationSettings(steps=2, batch_size=1), root=tmp_path, progress=False)
    assert calls == []
    # a changed setting misses the cache
    m3 = generate({'base': tiny}, prompts[:1], seeds[:1], GenerationSettings(steps=2, guidance_scale=3.0), root=tmp_path, progress=False)
    assert calls == [1] and m3.path[0] not in set(m.path) and m3.settings_hash[0] != m.settings_hash[0]
    # resume: only the missing image is regenerated, and identically
    calls.clear()
    victim = Path(m.path[4]); before = load_images([victim]); victim.unlink()
    generate({'base': tiny, 'other': other}, prompts, seeds, FAST, root=tmp_path, progress=False)
    assert calls == [1] and torch.equal(load_images([victim]), before)
    # cache=False regenerates everything
    calls.clear()
    generate({'base': tiny}, prompts, seeds, FAST, root=tmp_path, cache=False, progress=False)
    assert sum(calls) == 6
    man = load_json(Path(m.path[0]).parent / 'manifest.json')
    assert man['fingerprint'] == tiny.fingerprint() and man['settings']['steps'] == 2 and len(man['images']) == 6


def test_default_cache_location_uses_fingerprint_and_settings(tiny):
    m = generate(tiny, ['a photo of'], [0], FAST, progress=False)
    p = Path(m.path[0])
    assert p.parent.name == FAST.hash(tiny) and p.parent.parent.name == tiny.fingerprint()
    assert str(p).startswith(os.environ['OPEN_FORGETTING_HOME'])


def test_bad_input_clear_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="'ddpm'"): GenerationSettings(scheduler='ddpm')
    with pytest.raises(ValueError, match='steps'): GenerationSettings(steps=0)
    with pytest.raises(TypeError, match='single string'): generate(tiny, 'a photo of', [0], FAST, root=tmp_path)
    with pytest.raises(ValueError, match='at least one'): generate(tiny, [], [0], FAST, root=tmp_path)
    with pytest.raises(ValueError, match='one seed per prompt'): sample(tiny, ['a', 'b'], [0], FAST)
    with pytest.raises(ValueError, match='multiples'): sample(tiny, ['a'], [0], GenerationSettings(height=31))
    with pytest.raises(ValueError, match='empty'): load_images([])
    save_png(torch.rand(3, 8, 8), tmp_path / 'a.png'); save_png(torch.rand(3, 8, 6), tmp_path / 'b.png')
    with pytest.raises(ValueError, match='one size'): load_images([tmp_path / 'a.png', tmp_path / 'b.png'])
    with pytest.raises(FileNotFoundError, match='nope.png'): load_images([tmp_path / 'nope.png'])


def test_png_round_trip_is_8bit_exact(tmp_path):
    x = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    save_png(x.float() / 255, tmp_path / 'x.png')
    assert torch.equal(load_images([tmp_path / 'x.png'], dtype=torch.uint8)[0], x)


def test_kill_mid_run_then_rerun_recomputes_nothing_finished(tiny, tmp_path, monkeypatch):
    "A run killed after its first batch (manifest never written for it) resumes from the files on disk, identically."
    prompts, seeds = ['a photo of'], [0, 1, 2, 3]
    clean = load_images(generate(tiny, prompts, seeds, FAST, root=tmp_path / 'clean', progress=False).path)
    calls, real = [], gen.sample
    def killed_after_one(c, p, s, st, **kw):
        if calls: raise KeyboardInterrupt
        calls.append(len(p)); return real(c, p, s, st, **kw)
    monkeypatch.setattr(gen, 'sample', killed_after_one)
    monkeypatch.setattr(gen, 'atomic_save_json', lambda *a, **k: None)      # killed before any manifest write
    st = GenerationSettings(steps=2, batch_size=2)
    with pytest.raises(KeyboardInterrupt): generate(tiny, prompts, seeds, st, root=tmp_path / 'run', progress=False)
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(gen, 'sample', lambda c, p, s, st, **kw: calls.append(list(s)) or real(c, p, s, st, **kw))
    m = generate(tiny, prompts, seeds, st, root=tmp_path / 'run', progress=False)
    assert calls == [[2, 3]]                                             # only the unfinished batch
    assert torch.equal(load_images(m.path), clean)
    assert len(load_json(Path(m.path[0]).parent / 'manifest.json')['images']) == 4


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'empty', 'resized'])
def test_damaged_image_is_quarantined_and_regenerated_identically(tiny, tmp_path, damage):
    prompts, seeds = ['a photo of', 'a blurry photo of'], [0, 1]
    m = generate(tiny, prompts, seeds, FAST, root=tmp_path, progress=False)
    clean, victim = load_images(m.path), Path(m.path[1])
    data = victim.read_bytes()
    if damage == 'truncate': victim.write_bytes(data[: len(data) // 2])
    if damage == 'flip': b = bytearray(data); b[-30] ^= 0x10; victim.write_bytes(bytes(b))
    if damage == 'empty': victim.write_bytes(b'')
    if damage == 'resized': save_png(torch.rand(3, 8, 8), victim)     # whole, but not the size this entry must have
    with pytest.warns(UserWarning, match=victim.name):
        m2 = generate(tiny, prompts, seeds, FAST, root=tmp_path, progress=False)
    assert torch.equal(load_images(m2.path), clean)
    assert len(list(tmp_path.rglob(f'{victim.name}.damaged-*'))) == 1


def test_nan_unet_raises_naming_model_and_step(tiny, tmp_path):
    import copy
    from open_forgetting.core import NonFiniteError
    broken = copy.deepcopy(tiny); broken.source = 'my-broken-model'
    with torch.no_grad(): broken.unet.conv_in.weight[0, 0, 0, 0] = float('inf')
    with pytest.raises(NonFiniteError, match=r'my-broken-model.*sampling step 1/2'):
        generate(broken, ['a photo of'], [0], FAST, root=tmp_path, progress=False)
    assert not list(tmp_path.rglob('*.png'))                             # nothing half-computed written


@pytest.mark.parametrize('kw, name', [(dict(steps='10'), 'steps'), (dict(steps=True), 'steps'), (dict(batch_size=0), 'batch_size'),
                                      (dict(guidance_scale=-1), 'guidance_scale'), (dict(guidance_scale=None), 'guidance_scale'),
                                      (dict(width=12.5), 'width'), (dict(dtype='int8'), 'dtype'), (dict(scheduler=3), 'scheduler')])
def test_settings_type_and_range_errors_name_the_parameter(kw, name):
    with pytest.raises((TypeError, ValueError), match=f'GenerationSettings.{name}'): GenerationSettings(**kw)
