"""Tests of issue 13's and 20's training defects: the caller's base model untouched, any resolution, non-finite outputs named,
damaged trained weights and caches detected and recomputed, run identities without paths and with the differing field named,
variants that agree with their weights, default checkpoints, typed settings; and the Drift Correction teacher cache."""
import copy, json, os, shutil, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import open_forgetting.train as T
from open_forgetting.core import NonFiniteError, DamagedFileError
from open_forgetting.losses import drift_correction_loss, teacher_prediction
from open_forgetting.models import tiny_components
from open_forgetting.train import (TrainConfig, Trainer, customize, load_customized, load_concept, variant_config,
                                   class_images, NonFiniteLossError)


from conftest import write_images as _images   # the shared `concept` fixture is in conftest.py

@pytest.fixture(scope='module')
def prompt_file(tmp_path_factory):
    p = tmp_path_factory.mktemp('prompts') / 'pool.txt'; p.write_text('a photo of\na blurry photo of\n')
    return str(p)

def cfg(method='lora', variant='dc', prompt_file=None, **kw):
    base = dict(max_steps=2, num_class_images=2, class_sampling_steps=2, dc_n_reg=2, progress=False, learning_rate=1e-3,
                dc_prompt_file=prompt_file)
    base.update(kw)
    return variant_config(method, variant, **base)

def _same_weights(a, b):
    a, b = load_file(Path(a) / 'trained.safetensors'), load_file(Path(b) / 'trained.safetensors')
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def _flip_byte(path, at=-20):
    data = bytearray(Path(path).read_bytes()); data[at] ^= 0xFF; Path(path).write_bytes(bytes(data))

def _no_training(monkeypatch):
    monkeypatch.setattr(Trainer, 'run', lambda self: pytest.fail('trained again'))


# ---- issue 13: the caller's base model is never modified; training at any resolution
def test_customize_leaves_the_base_model_untouched_and_reloadable(concept, prompt_file, tmp_path):
    "diffusers' pipeline rewrites deprecated scheduler settings in place: generating class images must not reach the caller's scheduler."
    from diffusers import DDPMScheduler
    base = tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4)
    base.scheduler = DDPMScheduler.from_config({**base.scheduler.config, 'clip_sample': True, 'steps_offset': 0})
    fp = base.fingerprint()
    run = customize(base, concept, cfg('dreambooth', 'dc', prompt_file, train_identifier_embedding=True), tmp_path)
    assert base.fingerprint() == fp and base.scheduler.config.clip_sample is True
    assert not any(p.requires_grad for p in base.unet.parameters()) and not base.unet.training
    load_customized(base, run)                                  # the very base it was trained from is accepted

def test_student_is_built_by_one_function(small, concept, prompt_file, tmp_path, monkeypatch):
    calls = []
    real = T.build_student
    monkeypatch.setattr(T, 'build_student', lambda *a, **k: calls.append(1) or real(*a, **k))
    run = customize(small, concept, cfg('custom_diffusion', 'dc', prompt_file), tmp_path)
    assert calls == [1]
    load_customized(small, run)
    assert calls == [1, 1]

@pytest.mark.parametrize('latents', ['batch', 'prior', 'replay', 'noise'])
def test_training_at_a_resolution_other_than_the_native_one(small, concept, prompt_file, tmp_path, latents):
    assert small.resolution == 32
    c = cfg('lora', 'dc', prompt_file, resolution=16, dc_latents=latents, dc_replay_images=2, validation_every=2,
            validation_steps=2)
    tr = Trainer(small, concept, c, tmp_path)
    assert tr.data.instance_latents.shape[-1] == 8 and tr.data.class_data['latents'].shape[-1] == 8
    if latents == 'replay': assert tr.data.replay.shape[-1] == 8
    tr.run()
    assert Image.open(tmp_path / 'validation' / 'step_000002.png').size == (16, 16)     # one image: no grid padding


# ---- issue 20: non-finite UNet outputs stop training, naming the model and the step
def _poisoned(seed=0):
    base = tiny_components(seed=seed, channels=(8, 16), text_dim=16, norm_num_groups=4)
    with torch.no_grad(): base.unet.conv_out.bias[0] = float('nan')
    return base

def test_nan_unet_output_names_the_model_and_the_step(concept, prompt_file, tmp_path):
    base = _poisoned()
    with pytest.raises(NonFiniteError, match=r'student UNet \(lora/plain.*training step 1'):
        customize(base, concept, cfg('lora', 'plain', prompt_file, lambda_pr=0.0), tmp_path / 'plain')
    with pytest.raises(NonFiniteLossError, match=r'teacher UNet.*training step 1'):
        customize(base, concept, cfg('lora', 'dc_pr', prompt_file), tmp_path / 'dc')
    with pytest.raises(NonFiniteError, match=r'teacher UNet.*DC teacher pool'):
        customize(base, concept, cfg('lora', 'dc_pr', prompt_file, dc_teacher_pool=4), tmp_path / 'pool')
    assert not (tmp_path / 'plain' / 'trained.safetensors').exists()


# ---- issue 20: damaged files are detected, set aside and recomputed
@pytest.mark.parametrize('damage', ['flip', 'truncate'])
def test_damaged_trained_weights_are_set_aside_and_retrained(small, concept, prompt_file, tmp_path, damage):
    c = cfg('lora', 'plain', prompt_file)
    ref = customize(small, concept, c, tmp_path / 'ref')
    run = customize(small, concept, c, tmp_path / 'run')
    f = run / 'trained.safetensors'
    if damage == 'flip': _flip_byte(f)
    else: f.write_bytes(f.read_bytes()[:-100])
    with pytest.warns(UserWarning, match='trained.safetensors is damaged'):
        with pytest.raises(DamagedFileError, match='retrain'): load_customized(small, run)
    assert len(list(run.glob('trained.safetensors.damaged-*'))) == 1 and not f.exists()
    assert _same_weights(customize(small, concept, c, run), ref)          # retrained: equal to an undamaged run
    _flip_byte(ref / 'trained.safetensors')                              # a finished run found damaged by customize
    with pytest.warns(UserWarning, match='trained.safetensors is damaged'): again = customize(small, concept, c, ref)
    assert _same_weights(again, run)
    load_customized(small, again)

def _class_cache_file(prompt):
    for meta in Path(os.environ['OPEN_FORGETTING_HOME']).glob('cache/class_images/*/meta.json'):
        if json.loads(meta.read_text())['prompt'] == prompt: return meta.with_name('latents.safetensors')

@pytest.mark.parametrize('damage', ['flip', 'truncate', 'meta'])
def test_damaged_class_image_cache_is_recomputed(small, damage):
    prompt = f'a photo of a damaged {damage}'
    a = class_images(small, prompt, 2, steps=2, progress=False)
    path = _class_cache_file(prompt)
    if damage == 'flip': _flip_byte(path)
    elif damage == 'truncate': path.write_bytes(path.read_bytes()[:50])
    else: path.with_name('meta.json').write_text('{"prompt": "a photo')
    with pytest.warns(UserWarning, match='is damaged'):
        b = class_images(small, prompt, 2, steps=2, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                    # healed: read without a warning
        assert torch.equal(class_images(small, prompt, 2, steps=2, progress=False)['latents'], a['latents'])

def test_non_finite_class_images_are_refused(concept):
    with pytest.raises(NonFiniteError, match='class images'):
        class_images(_poisoned(seed=3), 'a photo of a nan', 2, steps=2, progress=False)


# ---- issue 20: run identities keyed by content, without paths; the differing field named
def test_moved_prompt_file_run_folder_concept_and_home_keep_a_finished_run(small, concept, prompt_file, tmp_path, monkeypatch):
    c = cfg('lora', 'dc', prompt_file)
    run = customize(small, concept, c, tmp_path / 'a' / 'run')
    info = json.loads((run / 'run.json').read_text())
    assert str(tmp_path) not in json.dumps(info['identity']) and prompt_file not in json.dumps(info['identity'])
    moved_prompts = tmp_path / 'elsewhere.txt'; shutil.copy(prompt_file, moved_prompts)
    moved_images = tmp_path / 'images' / concept.instance_dir.name; shutil.copytree(concept.instance_dir, moved_images)
    shutil.move(str(tmp_path / 'a'), str(tmp_path / 'b'))
    _no_training(monkeypatch)
    moved = load_concept(moved_images, class_noun='toy')
    assert customize(small, moved, cfg('lora', 'dc', str(moved_prompts)), tmp_path / 'b' / 'run') == tmp_path / 'b' / 'run'
    # moving OPEN_FORGETTING_HOME: the default run folder's name depends on the identity only
    default = T.default_run_dir(concept, c, small.fingerprint())
    monkeypatch.setenv('OPEN_FORGETTING_HOME', str(tmp_path / 'other_home'))
    assert T.default_run_dir(moved, cfg('lora', 'dc', str(moved_prompts)), small.fingerprint()).name == default.name

def test_edited_prompt_file_or_setting_is_a_different_run_and_the_error_names_the_field(small, concept, tmp_path):
    pf = tmp_path / 'prompts.txt'; pf.write_text('a photo of\n')
    run = customize(small, concept, cfg('lora', 'dc', str(pf), lambda_dc=50), tmp_path / 'run')
    with pytest.raises(FileExistsError, match=r'config\.lambda_dc: 50\.0 -> 60\.0'):
        customize(small, concept, cfg('lora', 'dc', str(pf), lambda_dc=60), run)
    pf.write_text('a blurry photo of\n')
    with pytest.raises(FileExistsError, match=r'config\.dc_prompt_file: .sha256:'):
        customize(small, concept, cfg('lora', 'dc', str(pf), lambda_dc=50), run)
    with pytest.raises(FileExistsError, match=r'steps: 2 -> 3'):
        customize(small, concept, cfg('lora', 'dc', str(pf), lambda_dc=50, max_steps=3), run)

def test_every_training_setting_is_in_the_key_and_engineering_ones_are_not():
    base = TrainConfig(variant='dc', lambda_dc=1.0, dc_latents='replay')
    changed = dict(learning_rate=1e-3, seed=1, resolution=16, dc_teacher_pool=8, mixed_precision='bf16', hflip=True,
                   dc_replay_images=3, class_seed=2, snr_gamma=5.0, lora_rank=8, max_grad_norm=None, dc_fused=False)
    for k, v in changed.items(): assert TrainConfig(**{**base.to_dict(), k: v}).key() != base.key(), k
    same = dict(progress=False, checkpoint_every=7, keep_checkpoints=3, validation_every=5, device='cpu',
                validation_prompts=('x',), keep_checkpoints_when_done=True, offload_base=True)
    for k, v in same.items(): assert TrainConfig(**{**base.to_dict(), k: v}).key() == base.key(), k


# ---- issue 20: settings checked up front, variants that agree with their weights
@pytest.mark.parametrize('kw,message', [
    (dict(learning_rate='1e-4'), "learning_rate='1e-4' must be a float"),
    (dict(variant='dc', lambda_dc='abc'), "lambda_dc='abc' must be a float"),
    (dict(variant='dc', lambda_dc=-1), 'lambda_dc=-1.0 must be >= 0'),
    (dict(max_steps=2.5), 'max_steps=2.5 must be an int'),
    (dict(learning_rate=float('nan')), 'learning_rate=nan must be a float'),
    (dict(hflip='yes'), "hflip='yes' must be a bool"),
    (dict(offload_base='yes'), "offload_base='yes' must be a bool"),
    (dict(train_batch_size=0), 'train_batch_size=0 must be > 0'),
    (dict(adam_beta1=1.0), 'adam_beta1=1.0 must be in'),
    (dict(lora_targets='to_q'), "lora_targets='to_q' must be a tuple"),
    (dict(variant='plain', lambda_dc=50.0), "variant='plain' with lambda_dc=50.0"),
    (dict(variant='dc'), "variant='dc' with lambda_dc=0"),
    (dict(variant='dc_pr', lambda_dc=1.0), "variant='dc_pr'"),
    (dict(variant='DC', lambda_dc=1.0), "variant='DC'"),
])
def test_bad_settings_are_refused_naming_the_parameter(kw, message):
    with pytest.raises((TypeError, ValueError), match=message.replace('(', r'\(').replace('[', r'\[')):
        TrainConfig(**kw)

def test_plain_variant_with_dc_is_refused_through_variant_config():
    with pytest.raises(ValueError, match="variant='plain' with lambda_dc=5.0"): variant_config('lora', 'plain', lambda_dc=5)
    assert TrainConfig(lambda_dc=0, learning_rate=1).learning_rate == 1.0 and isinstance(TrainConfig(seed=np.int64(3)).seed, int)


# ---- issue 20: checkpoints by default, so a killed training resumes mid-way
class _Stop(Exception): pass

def test_default_checkpoints_let_a_killed_run_resume_bitwise(small, concept, prompt_file, tmp_path, monkeypatch):
    c = cfg('lora', 'dc', prompt_file, max_steps=20, hflip=True)
    assert c.checkpoint_interval == 2
    full = customize(small, concept, c, tmp_path / 'full')
    real = Trainer.train_step
    def killed(self):
        if self.step == 7: raise _Stop
        return real(self)
    monkeypatch.setattr(Trainer, 'train_step', killed)
    with pytest.raises(_Stop): customize(small, concept, c, tmp_path / 'resumed')
    assert [p.name for p in (tmp_path / 'resumed' / 'checkpoints').iterdir()] == ['step_000006']
    monkeypatch.setattr(Trainer, 'train_step', real)
    started = []
    monkeypatch.setattr(Trainer, 'load_checkpoint', lambda self, p, _r=Trainer.load_checkpoint: started.append(p.name) or _r(self, p))
    resumed = customize(small, concept, c, tmp_path / 'resumed')
    assert started == ['step_000006'] and _same_weights(full, resumed)


# ---- issue 14: Drift Correction with a cached teacher [ours]
def test_cached_teacher_matches_the_live_teacher_in_the_loop(small, concept, prompt_file, tmp_path, monkeypatch):
    c = cfg('lora', 'dc', prompt_file, dc_teacher_pool=6, dc_fused=False)
    tr = Trainer(small, concept, c, tmp_path / 'a')
    assert tr.teacher is None and len(tr.pool) == 6                           # the teacher UNet is not kept
    live = teacher_prediction(small.unet, tr.pool.noisy, tr.pool.timesteps, tr.reg_embeds[tr.pool.prompt_idx])
    torch.testing.assert_close(tr.pool.target, live)                          # the cache holds θ0's predictions
    # one step's DC term equals the live teacher's L_DC on the samples the step drew, with the student before the step
    before = copy.deepcopy(tr.student.unet)
    drawn = []
    real_draw = type(tr.pool).draw
    monkeypatch.setattr(type(tr.pool), 'draw', lambda self, n, g: drawn.append(real_draw(self, n, g)) or drawn[-1])
    out = tr.train_step()
    z, t, idx, _ = drawn[0]
    expected = drift_correction_loss(before, small.unet, z, t, tr.reg_embeds[idx])
    assert out['dc'] == pytest.approx(expected.item(), rel=1e-5, abs=1e-12)

def test_teacher_pool_is_reused_across_methods_and_variants_and_healed_when_damaged(small, concept, prompt_file, tmp_path, monkeypatch):
    kw = dict(dc_teacher_pool=5, dc_latents='prior', dc_prompts='empty', seed=11)
    first = Trainer(small, concept, cfg('lora', 'dc', prompt_file, **kw), tmp_path / 'a').pool
    real_pool = T.teacher_pool
    monkeypatch.setattr(T, 'teacher_pool', lambda *a, **k: pytest.fail('teacher ran again'))
    for method, variant in (('dreambooth', 'dc_pr'), ('custom_diffusion', 'dc')):
        again = Trainer(small, concept, cfg(method, variant, prompt_file, **kw), tmp_path / method).pool
        assert torch.equal(again.target, first.target) and torch.equal(again.noisy, first.noisy)
    other_seed = dict(kw, seed=12)
    monkeypatch.setattr(T, 'teacher_pool', real_pool)
    assert not torch.equal(Trainer(small, concept, cfg('lora', 'dc', prompt_file, **other_seed), tmp_path / 's').pool.noisy,
                           first.noisy)
    files = sorted(Path(os.environ['OPEN_FORGETTING_HOME']).glob('cache/dc_teacher/*.safetensors'), key=os.path.getmtime)
    target_file = next(f for f in files if json.loads(f.with_suffix('.json').read_text())['seed'] == 11)
    _flip_byte(target_file)
    with pytest.warns(UserWarning, match='is damaged'):
        healed = Trainer(small, concept, cfg('lora', 'dc', prompt_file, **kw), tmp_path / 'h').pool
    assert torch.equal(healed.target, first.target)

def test_resume_with_a_cached_teacher_is_bitwise(small, concept, prompt_file, tmp_path, monkeypatch):
    c = cfg('dreambooth', 'dc', prompt_file, max_steps=4, dc_teacher_pool=4, checkpoint_every=2)
    full = customize(small, concept, c, tmp_path / 'full')
    real = Trainer.train_step
    monkeypatch.setattr(Trainer, 'train_step', lambda self: (_ for _ in ()).throw(_Stop) if self.step == 3 else real(self))
    with pytest.raises(_Stop): customize(small, concept, c, tmp_path / 'resumed')
    monkeypatch.setattr(Trainer, 'train_step', real)
    assert _same_weights(full, customize(small, concept, c, tmp_path / 'resumed'))


# ---- issue 19: each process resumes its own random state; the launcher's mixed precision is honoured
def test_each_process_restores_its_own_random_state(small, concept, prompt_file, tmp_path):
    from open_forgetting.core import torch_generator
    c = cfg('lora', 'dc', prompt_file, max_steps=10)
    tr = Trainer(small, concept, c, tmp_path)
    tr.rank, tr.generator = 1, torch_generator(c.seed + 1)          # as process 1 of two
    tr.train_step()
    ckpt = tr.save_checkpoint()
    assert sorted(p.name for p in ckpt.glob('rng_rank*.pt')) == ['rng_rank1.pt']
    expected = torch.randn(4, generator=tr.generator)
    again = Trainer(small, concept, c, tmp_path); again.rank = 1
    again.load_checkpoint(ckpt)
    assert torch.equal(torch.randn(4, generator=again.generator), expected) and again.step == 1
    rank0 = Trainer(small, concept, c, tmp_path)
    with pytest.warns(UserWarning, match='no random state for process 0'): rank0.load_checkpoint(ckpt)
    assert not torch.equal(torch.randn(4, generator=rank0.generator), expected)

def test_the_launchers_mixed_precision_is_honoured(small, concept, prompt_file, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState
    monkeypatch.setenv('ACCELERATE_MIXED_PRECISION', 'bf16')                # what `accelerate launch --mixed_precision bf16` sets
    try:
        c = cfg('lora', 'dc', prompt_file)
        assert c.mixed_precision is None and c.key() == cfg('lora', 'dc', prompt_file, mixed_precision='bf16').key()
        tr = Trainer(small, concept, c, tmp_path / 'a')
        assert tr.accelerator.mixed_precision == 'bf16' and next(tr.teacher.parameters()).dtype == torch.bfloat16
        explicit = Trainer(small, concept, cfg('lora', 'dc', prompt_file, mixed_precision='no'), tmp_path / 'b')
        assert explicit.accelerator.mixed_precision == 'no' and explicit.teacher is small.unet   # an explicit setting wins
    finally: AcceleratorState._reset_state(True)


# ---- issue 20: damaged checkpoints, replay sets and run.json are detected too
def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_resumed(small, concept, prompt_file, tmp_path, monkeypatch):
    c = cfg('lora', 'dc', prompt_file, max_steps=10, checkpoint_every=2, keep_checkpoints=2)
    full = customize(small, concept, c, tmp_path / 'full')
    real = Trainer.train_step
    monkeypatch.setattr(Trainer, 'train_step', lambda self: (_ for _ in ()).throw(_Stop) if self.step == 7 else real(self))
    with pytest.raises(_Stop): customize(small, concept, c, tmp_path / 'resumed')
    ckpts = tmp_path / 'resumed' / 'checkpoints'
    assert sorted(p.name for p in ckpts.iterdir()) == ['step_000004', 'step_000006']
    _flip_byte(ckpts / 'step_000006' / 'trainable.safetensors')
    monkeypatch.setattr(Trainer, 'train_step', real)
    started = []
    monkeypatch.setattr(Trainer, 'load_checkpoint', lambda self, p, _r=Trainer.load_checkpoint: started.append(p.name) or _r(self, p))
    with pytest.warns(UserWarning, match='step_000006 is damaged'): resumed = customize(small, concept, c, tmp_path / 'resumed')
    assert started == ['step_000004'] and _same_weights(full, resumed)

def test_damaged_replay_set_is_recomputed(small):
    from open_forgetting.train import replay_latents
    a, ia = replay_latents(small, ['a photo of', ''], 3, seed=5, steps=2)
    path = next(p for p in Path(os.environ['OPEN_FORGETTING_HOME']).glob('cache/replay/*.json')
                if json.loads(p.read_text())['seed'] == 5).with_suffix('.safetensors')
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.warns(UserWarning, match='is damaged'): b, ib = replay_latents(small, ['a photo of', ''], 3, seed=5, steps=2)
    assert torch.equal(a, b) and torch.equal(ia, ib)

def test_unreadable_run_json_is_set_aside_and_the_run_retrained(small, concept, prompt_file, tmp_path):
    c = cfg('lora', 'plain', prompt_file)
    run = customize(small, concept, c, tmp_path / 'run')
    ref = {k: v.clone() for k, v in load_file(run / 'trained.safetensors').items()}
    (run / 'run.json').write_text('{"identity": ')
    with pytest.warns(UserWarning, match='run.json is damaged'): again = customize(small, concept, c, run)
    new = load_file(again / 'trained.safetensors')
    assert all(torch.equal(new[k], ref[k]) for k in ref) and json.loads((run / 'run.json').read_text())['steps'] == 2


# ---- issue 19: checkpoints through accelerator.save_state, with hooks that keep only the trained parameters
def test_a_checkpoint_is_accelerates_state_with_only_the_trained_parameters(small, concept, prompt_file, tmp_path):
    from open_forgetting.core import file_sha256
    tr = Trainer(small, concept, cfg('lora', 'dc', prompt_file, max_steps=4), tmp_path)
    tr.train_step(); ckpt = tr.save_checkpoint()
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ['optimizer.bin', 'random_states_0.pkl', 'rng_rank0.pt', 'state.json', 'trainable.safetensors']   # no model_0
    trained = tr.method.trained_state(tr.student)
    saved = load_file(ckpt / 'trainable.safetensors')
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k].cpu()) for k in saved)
    assert len(saved) < len(tr.student.unet.state_dict())                       # LoRA's adapters, not the UNet
    sums = json.loads((ckpt / 'state.json').read_text())['sha256']
    assert sums == {n: file_sha256(ckpt / n) for n in names if n != 'state.json'}

def test_a_checkpoint_of_the_older_format_is_not_resumed(small, concept, prompt_file, tmp_path):
    from open_forgetting.train import resume_point
    c = cfg('lora', 'dc', prompt_file, max_steps=2)
    tr = Trainer(small, concept, c, tmp_path); tr.train_step(); ckpt = tr.save_checkpoint()
    (ckpt / 'optimizer.bin').rename(ckpt / 'optimizer.pt')                  # the layout before accelerate's save_state
    with pytest.warns(UserWarning, match='older open_forgetting'): assert resume_point(tmp_path) is None
    with pytest.warns(UserWarning, match='older open_forgetting'): again = customize(small, concept, c, tmp_path)   # from step 0
    assert _same_weights(customize(small, concept, c, tmp_path / 'fresh'), again)
