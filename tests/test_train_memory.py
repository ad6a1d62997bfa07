"""Memory-safe training defaults (open_forgetting.train): the automatic gradient-checkpointing rule, shared frozen weights,
DC's teacher without needless copies, and the caller's base model left bitwise unchanged."""
import json

import pytest
import torch

import open_forgetting.train as T
from open_forgetting.models import tiny_components
from open_forgetting.train import (Trainer, TrainConfig, customize, load_customized, needs_gradient_checkpointing,
                                   teacher_copy_dtype, variant_config, run_identity)

GiB = 2 ** 30
SD15 = 859_520_964            # UNet parameters of Stable Diffusion 1.5


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg(method, variant='plain', **kw):
    base = dict(max_steps=2, lambda_pr=0.0, dc_n_reg=1, progress=False, learning_rate=1e-3, checkpoint_every=0)
    base.update(kw)
    return variant_config(method, variant, **base)


def _checkpointing(unet) -> bool:
    return any(getattr(m, 'gradient_checkpointing', False) for m in unet.modules())


# ---- the automatic rule, as a function of sizes
def test_checkpointing_rule_picks_large_and_spares_tiny():
    # SD-1.5 DreamBooth at 512 px (64² latents; instance + class image) with 16 GiB free: on
    assert needs_gradient_checkpointing(SD15, SD15, 64, 2, 16 * GiB)
    # the tiny test model (16² latents) with the same memory: off
    assert not needs_gradient_checkpointing(1_000_000, 1_000_000, 16, 2, 16 * GiB)
    # monotone: more free memory never turns it on, a larger resolution or batch never turns it off
    for free in (4, 16, 40, 80, 200):
        on = needs_gradient_checkpointing(SD15, SD15, 64, 2, free * GiB)
        assert on >= needs_gradient_checkpointing(SD15, SD15, 64, 2, 2 * free * GiB)
        assert on <= needs_gradient_checkpointing(SD15, SD15, 96, 2, free * GiB)
        assert on <= needs_gradient_checkpointing(SD15, SD15, 64, 4, free * GiB)


def test_trainer_applies_the_rule_and_logs_it(small, concept, tmp_path, monkeypatch, caplog):
    caplog.set_level('INFO', logger='open_forgetting.train')         # the memory plan is a log record of the main process
    tr = Trainer(small, concept, cfg('lora'), tmp_path / 'a')
    assert not tr.memory['gradient_checkpointing'] and not _checkpointing(tr.student.unet)
    assert 'memory: gradient checkpointing off' in caplog.text; caplog.clear()
    monkeypatch.setattr(T, 'free_memory', lambda device: 1024)         # a machine with (almost) no free memory
    tr = Trainer(small, concept, cfg('lora'), tmp_path / 'b')
    assert tr.memory['gradient_checkpointing'] and _checkpointing(tr.student.unet)
    assert 'memory: gradient checkpointing on' in caplog.text
    # an explicit setting wins over the rule
    tr = Trainer(small, concept, cfg('lora', gradient_checkpointing=False), tmp_path / 'c')
    assert not _checkpointing(tr.student.unet)
    # checkpointing changes memory and time, not the result: it does not key a run
    assert cfg('lora', gradient_checkpointing=True).key() == cfg('lora').key() == cfg('lora', gradient_checkpointing=False).key()


# ---- frozen parts: precision and copies
def test_teacher_precision_rule():
    f32, bf16 = torch.float32, torch.bfloat16
    assert teacher_copy_dtype(True, f32, None, f32) is None          # the caller's UNet, no copy
    assert teacher_copy_dtype(True, bf16, None, f32) is None         # a bf16 base is used as it is, never upcast
    assert teacher_copy_dtype(True, f32, None, bf16) == bf16         # bf16 mixed precision: as the student computes
    assert teacher_copy_dtype(False, f32, None, f32) == f32          # base on another device: a copy there
    assert teacher_copy_dtype(True, f32, 'bf16', f32) == bf16        # asked for: a bf16 copy
    assert teacher_copy_dtype(True, bf16, 'bf16', f32) is None
    with pytest.raises(ValueError, match="frozen_dtype='int8'"):
        TrainConfig(frozen_dtype='int8')


def test_bf16_base_is_the_teacher_without_an_fp32_copy(concept, tmp_path):
    base = tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4)
    base.unet.to(torch.bfloat16)                                         # (no prior preservation: no class images to sample)
    tr = Trainer(base, concept, cfg('lora', 'dc'), tmp_path)
    assert tr.teacher is base.unet and tr.memory['teacher_dtype'] is None
    assert all(p.dtype == torch.float32 for p in tr.params.values())   # the trained parameters stay fp32
    out = tr.train_step()
    assert out['dc'] == out['dc'] and out['dc'] < 1e-2               # finite; DC starts near zero (bf16 rounding only)


def test_frozen_dtype_bf16_gives_a_bf16_teacher_copy_and_keys_dc_runs(small, concept, tmp_path):
    tr = Trainer(small, concept, cfg('lora', 'dc', frozen_dtype='bf16'), tmp_path)
    assert tr.teacher is not small.unet and next(tr.teacher.parameters()).dtype == torch.bfloat16
    assert next(small.unet.parameters()).dtype == torch.float32          # the caller's UNet is not converted
    assert torch.isfinite(torch.tensor(tr.train_step()['dc']))
    assert cfg('lora', 'dc', frozen_dtype='bf16').key() != cfg('lora', 'dc').key()
    assert cfg('lora', frozen_dtype='bf16').key() == cfg('lora').key()   # no DC, no teacher: same run


@pytest.mark.parametrize('method', ['lora', 'custom_diffusion', 'hypermod'])
def test_frozen_weights_are_shared_trained_ones_are_not(small, concept, tmp_path, method):
    kw = dict(method_settings={'self_init': {'steps': 1, 'batch_size': 1, 'latent_size': 8}}) if method == 'hypermod' else {}
    tr = Trainer(small, concept, cfg(method, **kw), tmp_path)
    base_ptrs = {p.data_ptr() for p in small.unet.parameters()}
    frozen = [p for p in tr.student.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.data_ptr() in base_ptrs for p in frozen)              # no second copy of the frozen UNet
    assert all(p.data_ptr() not in base_ptrs for p in tr.params.values())         # trained weights have their own storage
    assert tr.memory['n_shared_params'] == sum(p.numel() for p in frozen)
    # switching it off copies them
    tr = Trainer(small, concept, cfg(method, share_frozen_weights=False, **kw), tmp_path / 'copy')
    assert not any(p.data_ptr() in base_ptrs for p in tr.student.unet.parameters())


@pytest.mark.parametrize('method,variant', [('dreambooth', 'dc'), ('custom_diffusion', 'dc'), ('lora', 'plain'),
                                            ('hypermod', 'dc')])
def test_base_unchanged_after_customize_with_the_new_defaults(concept, tmp_path, monkeypatch, method, variant):
    base = tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4)
    monkeypatch.setattr(T, 'free_memory', lambda device: 1024)          # checkpointing on as well
    before = {k: v.clone() for m in ('unet', 'vae', 'text_encoder') for k, v in getattr(base, m).state_dict().items()}
    fp = base.fingerprint()
    kw = dict(method_settings={'self_init': {'steps': 1, 'batch_size': 1, 'latent_size': 8}}) if method == 'hypermod' else {}
    run = customize(base, concept, cfg(method, variant, **kw), tmp_path)
    assert base.fingerprint() == fp
    assert json.loads((run / T.RUN_FILE).read_text())['memory']['gradient_checkpointing'] is True   # the plan is recorded
    after = {k: v for m in ('unet', 'vae', 'text_encoder') for k, v in getattr(base, m).state_dict().items()}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # the loaded result is a full copy again (a user may change it): it does not share the base's storage
    custom = load_customized(base, run)
    base_ptrs = {p.data_ptr() for p in base.unet.parameters()}
    assert not any(p.data_ptr() in base_ptrs for p in custom.unet.parameters())


def test_a_prepare_that_writes_shared_weights_is_caught(small, concept, tmp_path):
    class Scribbler(T.CustomizationMethod):
        shares_frozen_weights = True                                    # a false promise
        def prepare(self, components, concept):
            components.unet.requires_grad_(False); components.unet.conv_out.requires_grad_(True)
            with torch.no_grad(): components.unet.conv_in.weight.mul_(1.0)
    T.register_method('scribbler', Scribbler)
    try:
        base = tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4)
        with pytest.raises(RuntimeError, match='wrote UNet weights in place'):
            Trainer(base, concept, TrainConfig(method='scribbler', max_steps=1, lambda_pr=0.0, progress=False), tmp_path)
    finally: T.METHODS.pop('scribbler', None)


def test_method_settings_are_checked(small):
    with pytest.raises(ValueError, match="takes no method_settings"):
        TrainConfig(method='lora', method_settings={'self_init': {'steps': 3}})
    with pytest.raises(TypeError, match='method_settings'):
        TrainConfig(method_settings='steps=3')
    assert TrainConfig(method_settings={}).key() == TrainConfig().key()


def test_a_run_finished_before_checkpointing_left_the_identity_is_still_finished(small, concept, tmp_path, monkeypatch):
    run = customize(small, concept, cfg('lora', max_steps=1), tmp_path)
    info = json.loads((run / T.RUN_FILE).read_text())
    info['identity']['config']['gradient_checkpointing'] = False        # what an older open_forgetting recorded
    (run / T.RUN_FILE).write_text(json.dumps(info))
    monkeypatch.setattr(T.Trainer, 'run', lambda self: pytest.fail('a finished run must not train again'))
    assert customize(small, concept, cfg('lora', max_steps=1), tmp_path) == run
    info['identity']['config']['learning_rate'] = 0.5                    # a real difference is still refused
    (run / T.RUN_FILE).write_text(json.dumps(info))
    with pytest.raises(FileExistsError, match='learning_rate'):
        customize(small, concept, cfg('lora', max_steps=1), tmp_path)
