"""Foundation: the real loader on tiny saved models, determinism, clear errors, fingerprints, no network."""
import json, os, socket
from pathlib import Path

import pytest
import torch

from open_forgetting.core import (atomic_save_json, load_json, model_fingerprint, seed_everything, stable_hash,
                                  get_dtype, data_path)
from open_forgetting.models import (ModelNotAvailableError, encode_images, encode_prompts, load_components,
                                    save_components, tiny_components)


def test_round_trip_through_real_loader(tiny, tmp_path):
    save_components(tiny, tmp_path / 'm')
    assert (tmp_path / 'm' / 'model_index.json').exists()
    assert list((tmp_path / 'm' / 'unet').glob('*.safetensors')), 'weights must be saved as safetensors'
    assert not list((tmp_path / 'm').rglob('*.bin')), 'no pickle files'
    back = load_components(tmp_path / 'm', dtype='fp32', device='cpu')
    for name in ('unet', 'vae', 'text_encoder'):
        a, b = getattr(tiny, name).state_dict(), getattr(back, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32).clamp(-1, 1)
    torch.testing.assert_close(encode_images(back, x), encode_images(tiny, x), rtol=0, atol=1e-5)
    torch.testing.assert_close(encode_prompts(back, ['a photo of']), encode_prompts(tiny, ['a photo of']), rtol=0, atol=0)
    assert back.latent_scale == tiny.latent_scale and back.vae_downsample == 2 and back.resolution == 32


def test_loader_dtype_and_diffusers_pipeline_compat(tiny, tmp_path):
    save_components(tiny, tmp_path / 'm')
    half = load_components(tmp_path / 'm', dtype='bf16', device='cpu')
    assert half.unet.dtype == torch.bfloat16 and half.text_encoder.dtype == torch.bfloat16
    assert half.vae.dtype == torch.float32  # VAE stays fp32 by default (fp16 SD VAEs overflow)
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / 'm', safety_checker=None, requires_safety_checker=False)
    assert pipe.unet.config.sample_size == 16


def test_seeded_runs_are_deterministic():
    a, b = tiny_components(seed=5), tiny_components(seed=5)
    assert a.fingerprint() == b.fingerprint()
    seed_everything(11); x1 = torch.randn(1, 4, 16, 16)
    seed_everything(11); x2 = torch.randn(1, 4, 16, 16)
    t, c = torch.tensor([10]), encode_prompts(a, ['a photo of'])
    assert torch.equal(a.unet(x1, t, c).sample, b.unet(x2, t, c).sample)


def test_tiny_components_does_not_disturb_global_rng():
    torch.manual_seed(0); expected = torch.rand(3)
    torch.manual_seed(0); tiny_components(seed=9); got = torch.rand(3)
    assert torch.equal(expected, got)


def test_fingerprint_tracks_every_weight(tiny):
    m = tiny_components(seed=0)
    fp = m.fingerprint()
    assert m.fingerprint() == fp
    with torch.no_grad(): next(m.vae.parameters()).view(-1)[0] += 1e-6
    assert m.fingerprint() != fp
    m2 = tiny_components(seed=0, prediction_type='v_prediction')
    assert m2.fingerprint() != fp, 'scheduler config is part of the fingerprint'


def test_clear_errors(tmp_path):
    with pytest.raises(ModelNotAvailableError, match='does not exist'):
        load_components(tmp_path / 'nope', device='cpu')
    (tmp_path / 'half').mkdir(); (tmp_path / 'half' / 'unet').mkdir()
    with pytest.raises(ModelNotAvailableError, match="lacks subfolders.*vae"):
        load_components(tmp_path / 'half', device='cpu')
    with pytest.raises(ModelNotAvailableError, match='stable-diffusion-v1-5/stable-diffusion-v1-5.*local folder'):
        load_components('stable-diffusion-v1-5/stable-diffusion-v1-5', device='cpu')  # offline, not cached
    with pytest.raises(ValueError, match="'fp7'"):
        get_dtype('cpu', 'fp7')


def test_network_is_blocked_in_tests():
    with pytest.raises(RuntimeError, match='network'):
        socket.create_connection(('198.51.100.1', 443), timeout=1)


def test_atomic_json_and_stable_hash(tmp_path):
    atomic_save_json({'z': 1, 'a': [1, 2]}, tmp_path / 'x.json')
    assert load_json(tmp_path / 'x.json') == {'a': [1, 2], 'z': 1}
    assert stable_hash({'a': 1, 'b': 2}) == stable_hash({'b': 2, 'a': 1})
    assert model_fingerprint({'w': torch.zeros(2)}) != model_fingerprint({'w': torch.zeros(3)})


def test_fingerprint_hashed_once_per_weight_state(monkeypatch):
    import open_forgetting.models as M
    comps = tiny_components(seed=2)
    calls = []
    real = M.model_fingerprint
    monkeypatch.setattr(M, 'model_fingerprint', lambda *a, **k: calls.append(1) or real(*a, **k))
    f0 = comps.fingerprint(); f1 = comps.fingerprint()
    assert f0 == f1 and len(calls) == 1                                  # the second call hashes nothing
    opt = torch.optim.SGD(comps.unet.parameters(), lr=0.1)              # an optimizer step changes every weight
    comps.unet.requires_grad_(True)
    comps.unet(torch.randn(1, 4, 16, 16), 10, encoder_hidden_states=torch.randn(1, 77, 32)).sample.sum().backward()
    opt.step()
    assert comps.fingerprint() != f0 and len(calls) == 2
    assert comps.fingerprint() == stable_hash([real(comps.unet, comps.vae, comps.text_encoder),
                                               stable_hash([comps.tokenizer.get_vocab(), comps.tokenizer.model_max_length]),
                                               {k: v for k, v in comps.scheduler.config.items() if not k.startswith('_')}])


def test_pickles_are_never_opened(tiny, tmp_path, monkeypatch):
    import pickle
    from open_forgetting.models import UnsafeWeightsError
    monkeypatch.setattr(torch, 'load', lambda *a, **k: pytest.fail('torch.load was called'))
    monkeypatch.setattr(pickle, 'load', lambda *a, **k: pytest.fail('pickle.load was called'))
    save_components(tiny, tmp_path / 'm')
    for sub, name in (('unet', 'diffusion_pytorch_model'), ('text_encoder', 'model')):
        f = tmp_path / 'm' / sub / f'{name}.safetensors'
        f.rename(f.with_suffix('.bin'))
        with pytest.raises(UnsafeWeightsError, match=rf'{sub}.*{name}\.bin.*never opened'): load_components(tmp_path / 'm', device='cpu')
        f.with_suffix('.bin').rename(f)
    for suffix in ('.ckpt', '.pt', '.bin'):
        (tmp_path / f'w{suffix}').write_bytes(b'\x80\x04K\x01.')        # a valid pickle: it must not be read
        with pytest.raises(UnsafeWeightsError, match='--to_safetensors'): load_components(tmp_path / f'w{suffix}', device='cpu')
