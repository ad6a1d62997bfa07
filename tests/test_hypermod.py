"""HyperMod (open_forgetting.hypermod): exact identity start, self-initialization, frozen base weights, save/load, detach."""
import copy
import json

import pytest
import torch

from open_forgetting.core import model_fingerprint
from open_forgetting.models import Components, encode_prompts, tiny_components
from open_forgetting.hypermod import (HYPERMOD_CONFIG, HYPERMOD_WEIGHTS, HyperModConfig, HyperModulator, SelfInitConfig,
                                      attach_hypermod, count_hypermod_parameters, hypermod_settings, load_hypermod,
                                      save_hypermod, select_layers, self_initialize)


@pytest.fixture(autouse=True)
def one_thread():
    "Tiny models: one intra-op thread is faster than two on a shared CPU; restored afterwards."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def shared():
    "A private tiny model (these tests attach modulators, so not the session's `tiny`) and fixed inputs."
    c = tiny_components(seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([30, 800])
    cond = encode_prompts(c, ['a photo of a dog', 'a photo of a car'])
    return c, (x, t, cond[:1].expand(2, -1, -1).contiguous()), cond


@pytest.fixture
def comps(shared):
    "Components whose UNet is a fresh copy of the shared base UNet."
    c = shared[0]
    return Components(copy.deepcopy(c.unet), c.vae, c.text_encoder, c.tokenizer, c.scheduler, c.source)


def _out(unet, inputs, grad=False):
    with torch.set_grad_enabled(grad):
        return unet(*inputs).sample


def _rel(a, b):
    return ((a - b).abs().mean() / b.abs().mean()).item()


def test_layer_selection(comps):
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D
    unet = comps.unet
    names = select_layers(unet)
    n_attn = sum(isinstance(m, Attention) for m in unet.modules())
    n_res = sum(isinstance(m, ResnetBlock2D) for m in unet.modules())
    assert len(names) == 4 * n_attn + 2 * n_res
    assert all(n.split('.')[-1] in ('to_q', 'to_k', 'to_v', 'conv1', 'conv2') or n.endswith('to_out.0') for n in names)
    assert select_layers(unet, ['attn2.to_k', 'attn2.to_v']) == [n for n in names if '.attn2.to_k' in n or '.attn2.to_v' in n]
    with pytest.raises(ValueError, match='match no Linear/Conv2d'):
        select_layers(unet, ['nonexistent'])


@pytest.mark.parametrize('kw', [dict(), dict(rank=2, residual_gamma=False, scale_by_weight_std=False)])
def test_identity_init_is_exact(comps, shared, kw):
    "gamma = 1, beta = 0, delta = 0 exactly => W' = W and b' = b bit for bit => the same output, for any embedding."
    inputs = shared[1]
    ref = _out(comps.unet, inputs)
    hm = attach_hypermod(comps.unet, init='identity', **kw)
    assert torch.equal(_out(comps.unet, inputs), ref)
    with hm.use_embedding(torch.randn(hm.config.embedding_dim)):
        assert torch.equal(_out(comps.unet, inputs, grad=True), ref)


def test_self_initialization_reduces_mismatch_to_below_the_prompt_effect(comps, shared):
    """A random hypernetwork starts away from the base; self-initialization (no data) brings it back.

    Tolerance: the residual difference in the noise prediction must be below half of what the *frozen* model
    itself changes when only the prompt changes ('a photo of a dog' -> 'a photo of a car'), on inputs that
    self-initialization never saw (other seed, full latent size). Measured: ~1.4% vs ~6.5% relative L1."""
    _, inputs, cond = shared
    hm = attach_hypermod(comps.unet)  # init='random'
    with hm.disabled():
        dog = _out(comps.unet, inputs)
        car = _out(comps.unet, (inputs[0], inputs[1], cond[1:].expand(2, -1, -1)))
    prompt_effect = _rel(car, dog)
    start = _rel(_out(comps.unet, inputs), dog)
    assert start > prompt_effect / 2  # the random start is visibly not the base model
    report = self_initialize(hm, comps, SelfInitConfig(steps=60, lr=1e-2, batch_size=2, latent_size=8, progress=False))
    assert report.after['mean_l1'] < report.before['mean_l1'] / 5          # measured on self-init's own held-out batch
    assert report.after['output_relative'] < report.before['output_relative'] / 5
    assert len(report.losses) == 60 and report.losses[-1] < report.losses[0]
    after = _rel(_out(comps.unet, inputs), dog)
    assert after < start / 5 and after < prompt_effect / 2


def test_only_hypernetwork_and_embedding_train(comps, shared):
    "Every parameter left trainable is under unet.hypermod; a few Adam steps of two losses change all of them and no UNet weight."
    inputs = shared[1]
    unet = comps.unet
    frozen_before = {k: v.clone() for k, v in unet.state_dict().items()}
    hm = attach_hypermod(unet)
    trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith('hypermod.') for n in trainable)
    assert len(trainable) == len(list(hm.parameters()))
    hyper_before = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.Adam(trainable.values(), lr=1e-3)
    target = torch.randn_like(inputs[0])
    for step in range(3):
        out = unet(*inputs).sample
        loss = ((out - target) ** 2).mean() if step % 2 == 0 else out.abs().mean()
        opt.zero_grad(); loss.backward(); opt.step()
    state = unet.state_dict()
    for k, v in frozen_before.items():
        assert torch.equal(state[k], v), k
    assert all(p.grad is None for n, p in unet.named_parameters() if not n.startswith('hypermod.'))
    changed = [n for n, p in trainable.items() if not torch.equal(p.detach(), hyper_before[n])]
    assert sorted(changed) == sorted(trainable)
    assert 'hypermod.embedding' in changed


def test_no_grad_cache_follows_parameter_updates(comps, shared):
    inputs = shared[1]
    hm = attach_hypermod(comps.unet)
    cached = _out(comps.unet, inputs)
    assert torch.equal(_out(comps.unet, inputs), cached)  # served from the cache
    with torch.no_grad(): hm.embedding.add_(0.5)
    fresh_no_grad = _out(comps.unet, inputs)
    assert not torch.equal(fresh_no_grad, cached)
    assert torch.equal(fresh_no_grad, _out(comps.unet, inputs, grad=True).detach())
    assert hm._cache
    comps.unet.train()  # switching mode frees the cached weights
    assert not hm._cache


def test_save_load_round_trip_and_base_check(comps, shared, tmp_path):
    inputs = shared[1]
    base_unet = copy.deepcopy(comps.unet)
    hm = attach_hypermod(comps.unet, rank=2)
    with torch.no_grad():  # move away from the initial state so the round trip is not trivially the init
        for p in hm.parameters(): p.add_(0.01 * torch.randn_like(p))
    out = _out(comps.unet, inputs)
    save_hypermod(hm, tmp_path, extra={'note': 'test'})
    meta = json.loads((tmp_path / HYPERMOD_CONFIG).read_text())
    assert meta['base_unet_fingerprint'] == model_fingerprint(base_unet) and meta['note'] == 'test'
    assert meta['num_parameters'] == hm.num_parameters()
    from safetensors.torch import load_file
    saved = load_file(tmp_path / HYPERMOD_WEIGHTS)
    assert all(k == 'embedding' or k.startswith('layers.') for k in saved)  # no UNet weight is stored
    n_buffers = sum(b.numel() for b in hm.buffers())
    assert sum(v.numel() for v in saved.values()) == hm.num_parameters()['total'] + n_buffers

    loaded = load_hypermod(base_unet, tmp_path)
    assert torch.equal(_out(base_unet, inputs), out)
    assert model_fingerprint(base_unet) == model_fingerprint(comps.unet)
    with pytest.raises(ValueError, match='already carries'):
        load_hypermod(base_unet, tmp_path)
    loaded.detach()
    with pytest.raises(ValueError, match='fingerprint'):
        load_hypermod(tiny_components(seed=1).unet, tmp_path)


def test_detach_restores_the_original_bitwise(comps, shared):
    inputs = shared[1]
    unet = comps.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    fp, ref = model_fingerprint(unet), _out(unet, inputs)
    hm = attach_hypermod(unet)
    assert model_fingerprint(unet) != fp and not torch.equal(_out(unet, inputs), ref)
    assert hm.detach() is unet
    after = unet.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert model_fingerprint(unet) == fp and torch.equal(_out(unet, inputs), ref)
    assert not any(k in m.__dict__ for m in unet.modules() for k in ('forward', '_hypermod', '_hypermod_name'))
    assert not hasattr(unet, 'hypermod')
    hm.attach(unet)  # can be attached again
    assert not torch.equal(_out(unet, inputs), ref)


def test_deepcopy_of_a_modulated_unet_is_independent(comps, shared):
    inputs = shared[1]
    attach_hypermod(comps.unet)
    ref = _out(comps.unet, inputs)
    twin = copy.deepcopy(comps.unet)
    assert torch.equal(_out(twin, inputs), ref)
    with torch.no_grad(): twin.hypermod.embedding.add_(1.0)
    assert not torch.equal(_out(twin, inputs), ref) and torch.equal(_out(comps.unet, inputs), ref)


def test_errors(comps):
    hm = attach_hypermod(comps.unet)
    with pytest.raises(ValueError, match='already carries'):
        HyperModulator(comps.unet)
    with pytest.raises(ValueError, match='already attached'):
        hm.attach(comps.unet)
    with pytest.raises(ValueError, match="must be 'random' or 'identity'"):
        HyperModConfig(init='zeros')
    with pytest.raises(ValueError, match='embedding shape'):
        with hm.use_embedding(torch.zeros(3)): pass


@pytest.mark.parametrize('kw', [dict(), dict(rank=3, hidden_dim=7, modulate_bias=False, target_modules=('to_k', 'conv2'))])
def test_parameter_count_from_shapes_matches_the_module(comps, kw):
    cfg = HyperModConfig(**kw)
    hm = HyperModulator(comps.unet, cfg)
    assert count_hypermod_parameters(comps.unet, cfg) == hm.num_parameters()
    assert hm.num_parameters()['total'] == sum(p.numel() for p in hm.parameters())


def test_modulation_is_computed_outside_autocast(comps):
    hm = attach_hypermod(comps.unet)
    name = hm.layer_names[0]
    module = comps.unet.get_submodule(name)
    w, b = hm.modulated_parameters(name, module)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        w16, b16 = hm.modulated_parameters(name, module)
    assert w16.dtype == module.weight.dtype and torch.equal(w16, w)


def test_hypermod_settings_from_train_config():
    train = pytest.importorskip('open_forgetting.train')
    cfg = train.TrainConfig(method='hypermod', seed=7, progress=False,
                            method_settings={'hypermod': {'rank': 3, 'target_modules': ['to_q']}, 'self_init': {'steps': 11}})
    hm_cfg, si_cfg = hypermod_settings(cfg, HyperModConfig(hidden_dim=5))
    assert (hm_cfg.rank, hm_cfg.hidden_dim, hm_cfg.target_modules, hm_cfg.seed) == (3, 5, ('to_q',), 7)
    assert (si_cfg.steps, si_cfg.seed, si_cfg.progress) == (11, 7, False)


def test_training_loop_plug_in(shared, tmp_path, monkeypatch):
    "HyperMod-DC\\pr through the training loop (skipped in a checkout without open_forgetting.train)."
    train = pytest.importorskip('open_forgetting.train')
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file
    from open_forgetting.hypermod import HyperMod
    inputs = shared[1]

    class TinyHyperMod(HyperMod):
        hypermod_config = HyperModConfig(hidden_dim=8)
        self_init_config = SelfInitConfig(steps=3, batch_size=1, latent_size=8)
    train.register_method('hypermod_test', TinyHyperMod)
    folder = tmp_path / 'toy_subject'; folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3): Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f'{i:02d}.png')
    base = tiny_components(seed=0)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    cfg = train.variant_config('hypermod_test', 'dc_pr', max_steps=2, dc_n_reg=1, learning_rate=1e-3, progress=False)
    run = train.customize(base, train.load_concept(folder, class_noun='toy'), cfg, tmp_path / 'run')
    trained = load_file(run / train.TRAINED_FILE)
    assert trained and all(k.startswith('unet.hypermod.') for k in trained)
    assert all(torch.equal(v, before[k]) for k, v in base.unet.state_dict().items()) and not hasattr(base.unet, 'hypermod')
    report = json.loads((run / 'hypermod.json').read_text())
    assert report['self_init']['l1_after'] < report['self_init']['l1_before']
    assert report['num_parameters']['total'] == sum(v.numel() for v in trained.values())

    import open_forgetting.hypermod as hypermod_module
    def no_self_init(*a, **k): raise AssertionError('loading a run must not self-initialize')
    monkeypatch.setattr(hypermod_module, 'self_initialize', no_self_init)
    monkeypatch.setattr(hypermod_module, 'self_initialize_cached', no_self_init)
    custom = train.load_customized(base, run)
    for k, v in trained.items():
        assert torch.equal(custom.unet.get_parameter(k[len('unet.'):]).detach().cpu(), v)
    ref = _out(base.unet, inputs)
    with custom.unet.hypermod.disabled():
        assert torch.equal(_out(custom.unet, inputs), ref)
    assert not torch.equal(_out(custom.unet, inputs), ref)


# ---- gradient checkpointing (the self-initialization's backward used to raise CheckpointError under it)
@pytest.mark.parametrize('embeddings', ['concept', 'random'])
def test_self_initialization_under_gradient_checkpointing_is_the_same(shared, embeddings):
    c = shared[0]
    cfg = SelfInitConfig(steps=2, batch_size=1, latent_size=8, lr=1e-2, embeddings=embeddings, progress=False)
    runs = []
    for gc in (False, True):
        unet = copy.deepcopy(c.unet)
        if gc: unet.enable_gradient_checkpointing()
        comps = Components(unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler, c.source)
        hm = attach_hypermod(unet, HyperModConfig(hidden_dim=8))
        rep = self_initialize(hm, comps, cfg)
        runs.append((rep.losses, {k: v.detach().clone() for k, v in hm.state_dict().items()}))
    # checkpointing recomputes the same forward in backward: same losses, same trained hypernetworks
    torch.testing.assert_close(torch.tensor(runs[1][0]), torch.tensor(runs[0][0]), rtol=1e-5, atol=1e-7)
    for k, v in runs[0][1].items(): torch.testing.assert_close(runs[1][1][k], v, rtol=1e-4, atol=1e-6)


def test_hypermod_training_step_under_gradient_checkpointing_is_the_same(tmp_path, monkeypatch):
    "Through the training loop: the self-initialization and one HyperMod step, with and without checkpointing."
    train = pytest.importorskip('open_forgetting.train')
    from conftest import write_images
    concept = train.load_concept(write_images(tmp_path / 'toy_subject', size=(32, 32)), class_noun='toy')
    base = tiny_components(seed=0)
    settings = {'self_init': {'steps': 2, 'batch_size': 1, 'latent_size': 8}, 'hypermod': {'hidden_dim': 8}}
    outs = []
    for gc in (False, True):
        monkeypatch.setenv('OPEN_FORGETTING_HOME', str(tmp_path / f'home_{gc}'))   # no self-init cache shared between the two
        cfg = train.variant_config('hypermod', 'plain', max_steps=1, lambda_pr=0.0, learning_rate=1e-3, progress=False,
                                   gradient_checkpointing=gc, method_settings=settings, checkpoint_every=0)
        tr = train.Trainer(base, concept, cfg, tmp_path / f'run_{gc}')
        assert tr.memory['gradient_checkpointing'] is gc
        tr.method.on_train_start(tr)
        after_init = {k: p.detach().clone() for k, p in tr.params.items()}
        loss = tr.train_step()['loss']
        outs.append((after_init, loss, {k: p.detach().clone() for k, p in tr.params.items()}))
    (init0, loss0, step0), (init1, loss1, step1) = outs
    for k in init0: torch.testing.assert_close(init1[k], init0[k], rtol=1e-4, atol=1e-6)
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    for k in step0: torch.testing.assert_close(step1[k], step0[k], rtol=1e-4, atol=1e-6)


# ---- self-initialization settings from a study
def test_study_sets_self_initialization(shared):
    train = pytest.importorskip('open_forgetting.train')
    from open_forgetting.study import load_study, train_config, StudyError
    from open_forgetting.hypermod import self_init_key
    over = {'training.methods': ['hypermod'],
            'training.per_method': {'hypermod': {'method_settings': {'self_init': {'steps': 7, 'lr': 3e-3}}}}}
    study = load_study('smoke', over, check_paths=False)
    cfg = train_config(study, 'hypermod', 'plain')
    default = train_config(load_study('smoke', {'training.methods': ['hypermod']}, check_paths=False), 'hypermod', 'plain')
    si, si_default = train.get_method(cfg).settings()[1], train.get_method(default).settings()[1]
    assert (si.steps, si.lr) == (7, 3e-3) and (si_default.steps, si_default.lr) == (SelfInitConfig.steps, SelfInitConfig.lr)
    # it keys the run and the self-initialization cache
    fp = 'base'
    concept = train.ConceptSpec('toy', 'toy')
    assert train.run_identity(fp, concept, cfg) != train.run_identity(fp, concept, default)
    c = shared[0]
    comps = Components(copy.deepcopy(c.unet), c.vae, c.text_encoder, c.tokenizer, c.scheduler, c.source)
    hm = attach_hypermod(comps.unet)
    assert self_init_key(hm, comps, si, prompts=['a photo of']) != self_init_key(hm, comps, si_default, prompts=['a photo of'])
    # an unknown field is named when the study is read
    bad = {**over, 'training.per_method': {'hypermod': {'method_settings': {'self_init': {'schedule': 'cosine'}}}}}
    with pytest.raises(StudyError, match="unknown field.*schedule"):
        load_study('smoke', bad, check_paths=False)
