"""Tests of open_forgetting.drift_map: closed forms of the functional drift D(c) [ours], invariances, the cache and the command."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from open_forgetting.drift_map import (DriftMapConfig, PerturbedPrompt, cache_folder, drift_map, drift_map_command,
                                       drift_table, load_vocabulary, paired_inputs, per_sample_drift)
from open_forgetting.generate import GenerationSettings
from open_forgetting.models import encode_prompts, save_components, tiny_components

WORDS = ('a photo of', 'dog', 'cat', 'tree', 'car', 'boat')
GEN = GenerationSettings(steps=2, guidance_scale=1.0)


@pytest.fixture(scope='module')
def base():
    return tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4, words=WORDS)


def _copy_unet(m, unet):
    out = copy.copy(m); out.unet = unet; return out


def _cfg(latents, **kw):
    return DriftMapConfig(**{**dict(n_samples=4, latents=latents, batch_size=8, n_boot=100, pool_prompts=('a photo of a boat',),
                                    generation=GEN), **kw})


@pytest.mark.parametrize('latents', ['noise', 'pool', 'own'])
def test_copy_has_zero_drift(base, latents):
    tab = drift_map(base, _copy_unet(base, copy.deepcopy(base.unet)), ['dog', 'cat'], 'a photo of a {}', _cfg(latents), cache=False)
    assert tab.drift.tolist() == [0.0, 0.0] and (tab.signal > 0).all()


@pytest.mark.parametrize('latents', ['pool', 'own'])
def test_s_squared_and_relative_closed_form(base, latents):
    "D = s²·mean(δ²) on the perturbed prompt only; D/S with S computed here from the base UNet directly."
    cfg = _cfg(latents, t_min=100, t_max=700)
    delta = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1))
    target = encode_prompts(base, ['a photo of a cat'])[0]
    zt, t = paired_inputs(base, ['a photo of a cat'], cfg)
    with torch.no_grad():
        cond = base.unet(zt[0], t, encoder_hidden_states=target.expand(4, -1, -1)).sample
        empty = base.unet(zt[0], t, encoder_hidden_states=encode_prompts(base, ['']).expand(4, -1, -1)).sample
    S = (cond - empty).pow(2).mean().item()
    for s in (0.3, 2.0):
        tab = drift_map(base, _copy_unet(base, PerturbedPrompt(base.unet, target, delta, s)), ['dog', 'cat', 'tree'],
                        'a photo of a {}', cfg, cache=False).set_index('concept')
        expected = s ** 2 * delta.pow(2).mean().item()
        assert tab.drift['cat'] == pytest.approx(expected, rel=1e-5)
        assert tab.relative['cat'] == pytest.approx(expected / S, rel=1e-4)
        assert tab.drift[['dog', 'tree']].tolist() == [0.0, 0.0] and tab['rank']['cat'] == 1


def test_batch_size_does_not_change_the_result(base):
    tuned = _copy_unet(base, copy.deepcopy(base.unet))
    with torch.no_grad(): tuned.unet.conv_out.weight.mul_(1.1)
    prompts = [f'a photo of a {w}' for w in ('dog', 'cat', 'tree', 'car', 'boat')]
    a = per_sample_drift(base, tuned, prompts, _cfg('pool', batch_size=4), cache=False)
    b = per_sample_drift(base, tuned, prompts, _cfg('pool', batch_size=64), cache=False)
    for k in a: np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-9)


def test_cache_key_follows_the_sampling_settings(base):
    assert cache_folder(base, _cfg('pool')) == cache_folder(base, _cfg('pool', batch_size=2, n_boot=7))   # no effect on predictions
    for change in (dict(seed=1), dict(t_min=5), dict(n_samples=5), dict(pool_prompts=('a photo of a car',)),
                   dict(generation=GenerationSettings(steps=3, guidance_scale=1.0))):
        assert cache_folder(base, _cfg('pool', **change)) != cache_folder(base, _cfg('pool'))


def test_table_intervals_and_ranks():
    rng = np.random.default_rng(0)
    drift = np.abs(rng.normal([[1.0], [3.0], [2.0]], 0.2, (3, 50)))
    signal = np.ones((3, 50)); signal[2] = 0.0          # a concept whose prompt does nothing: no relative drift
    cond = drift[[2, 0, 1]]                             # a: about 2, b: about 1 (c has no signal)
    vocab = pd.DataFrame({'concept': list('abc'), 'prompt': list('abc')})
    tab = drift_table(dict(drift=drift, signal=signal, cond_drift=cond), vocab, n_boot=300, rank_by='relative')
    assert tab.concept.tolist() == ['b', 'a', 'c'] and tab['rank'].tolist() == [1, 2, 3]
    assert ((tab.drift_lo <= tab.drift) & (tab.drift <= tab.drift_hi)).all()
    assert np.isnan(tab.set_index('concept').relative['c'])
    by_cond = drift_table(dict(drift=drift, signal=signal, cond_drift=cond), vocab, n_boot=300)
    assert by_cond.concept.tolist() == ['a', 'b', 'c']  # the default rank: the conditional drift
    with pytest.raises(ValueError, match='do not match'): drift_table(dict(drift=drift[:2], signal=signal[:2], cond_drift=cond[:2]), vocab)


def test_command_writes_table_figure_and_generations(base, tmp_path):
    b, t = tmp_path / 'base', tmp_path / 'tuned'
    save_components(base, b)
    tuned = copy.deepcopy(base)
    with torch.no_grad(): tuned.unet.conv_out.bias.add_(0.05)
    save_components(tuned, t)
    (tmp_path / 'v.txt').write_text('dog\ncat\n')
    tab = drift_map_command(str(b), str(t), str(tmp_path / 'v.txt'), tmp_path / 'out', template='a photo of a {}',
                            n_samples=3, latents='noise', top_k=2, seeds=(0,), progress=False)
    back = pd.read_csv(tmp_path / 'out' / 'drift_map.csv')
    assert back.prompt.tolist() == tab.prompt.tolist() and (back.drift > 0).all()
    # a constant output shift of 0.05 is D = 0.05² for every concept, whatever the prompt
    np.testing.assert_allclose(back.drift, 0.05 ** 2, rtol=1e-3)
    assert (tmp_path / 'out' / 'drift_map.png').exists() and (tmp_path / 'out' / 'top_k.png').exists()


def test_vocabulary_errors_name_the_fix():
    with pytest.raises(FileNotFoundError, match='miniworld'): load_vocabulary('imagenett')
    with pytest.raises(ValueError, match='no concepts'): load_vocabulary([])
