"""Tests of open_forgetting.train on tiny models: parameter isolation per method, DC in the loop, resume, reload, guards, data errors."""
import copy, dataclasses, json, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import open_forgetting.train as T
from open_forgetting.models import tiny_components, encode_prompts
from open_forgetting.train import (ConceptSpec, TrainConfig, Trainer, CustomizationMethod, register_method, variant_config,
                                   customize, load_customized, load_concept, instance_image_files, dreambench_subjects,
                                   BaseModelMismatchError, NonFiniteLossError, VARIANTS)

METHODS3 = ('dreambooth', 'custom_diffusion', 'lora')



from conftest import write_images as _images   # the shared `concept` fixture is in conftest.py

@pytest.fixture(scope='module')
def prompt_file(tmp_path_factory):
    p = tmp_path_factory.mktemp('prompts') / 'pool.txt'; p.write_text('a photo of\na blurry photo of\n\n')
    return str(p)

def cfg(method, variant='dc', prompt_file=None, **kw):
    base = dict(max_steps=3, num_class_images=2, class_sampling_steps=2, dc_n_reg=2, progress=False, learning_rate=1e-3,
                dc_prompt_file=prompt_file)
    base.update(kw)
    return variant_config(method, variant, **base)

def _norm(name):
    "Name of a student parameter in the base model (peft's base_layer, our extended token embedding)."
    return name.replace('.base_layer', '').replace('token_embedding.base.', 'token_embedding.')

def _untouched(base, student, trainable):
    "(name, bitwise equal to the base) for every student tensor that is not trained."
    base_sd = {f'{p}.{n}': t for p in ('unet', 'text_encoder') for n, t in getattr(base, p).state_dict().items()}
    out = []
    for prefix in ('unet', 'text_encoder'):
        for n, t in getattr(student, prefix).state_dict().items():
            key = f'{prefix}.{n}'
            if key not in trainable: out.append((key, torch.equal(t, base_sd[_norm(key)])))
    return out


# ---- every method changes exactly its parameters
@pytest.mark.parametrize('method', METHODS3)
def test_method_changes_only_its_parameters(small, concept, prompt_file, tmp_path, method):
    fp = small.fingerprint()
    tr = Trainer(small, concept, cfg(method, prompt_file=prompt_file), tmp_path)
    initial = {k: v.detach().clone() for k, v in tr.params.items()}
    tr.run()
    trained = tr.params
    # what trains: DreamBooth the whole UNet, CD attn2 K/V + the new token row, LoRA the adapters only
    keys = set(trained)
    if method == 'dreambooth': assert keys == {f'unet.{n}' for n, _ in small.unet.named_parameters()}
    if method == 'custom_diffusion':
        assert keys == {k for k in keys if '.attn2.to_k.' in k or '.attn2.to_v.' in k} | {'text_encoder.embeddings.token_embedding.new_rows'}
        assert 'text_encoder.embeddings.token_embedding.new_rows' in keys
    if method == 'lora': assert keys and all('lora_' in k for k in keys)
    unchanged = [k for k in keys if torch.equal(initial[k], trained[k].detach())]
    assert not unchanged, unchanged
    # everything else bitwise unchanged, and the caller's base model untouched
    for key, same in _untouched(small, tr.student, trained): assert same, key
    assert small.fingerprint() == fp

def test_dreambooth_text_encoder_option(small, concept, prompt_file, tmp_path):
    tr = Trainer(small, concept, cfg('dreambooth', train_text_encoder=True, prompt_file=prompt_file), tmp_path)
    assert tr.text_mode == 'all' and any(k.startswith('text_encoder.') for k in tr.params)
    tr.run()
    te0 = small.text_encoder.state_dict()
    assert any(not torch.equal(t, te0[n]) for n, t in tr.student.text_encoder.state_dict().items())

def test_custom_diffusion_keeps_old_token_rows(small, concept, prompt_file, tmp_path):
    run = customize(small, concept, cfg('custom_diffusion', prompt_file=prompt_file), tmp_path)
    cd = load_customized(small, run)
    old = small.text_encoder.get_input_embeddings().weight
    new = cd.text_encoder.get_input_embeddings().weight
    assert new.shape[0] == old.shape[0] + 1 and torch.equal(new[:-1], old)
    assert cd.tokenizer.convert_tokens_to_ids('<new1>') == old.shape[0]
    assert len(small.tokenizer) == old.shape[0]              # the caller's tokenizer did not grow


# ---- DC inside the loop
def test_dc_term_is_zero_at_the_start_of_lora(small, concept, prompt_file, tmp_path):
    "LoRA starts at the base model (lora_B = 0): exactly zero with a separate student pass, ~0 in the fused pass."
    tr = Trainer(small, concept, cfg('lora', prompt_file=prompt_file, dc_fused=False), tmp_path / 'a')
    assert tr.teacher is small.unet                          # no copy when the base already is in the training dtype
    out = tr.train_step()
    assert out['dc'] == 0.0 and out['inst'] > 0
    fused = Trainer(small, concept, cfg('lora', prompt_file=prompt_file), tmp_path / 'b').train_step()
    assert fused['dc'] < 1e-10 * fused['inst']
    assert fused['inst'] == pytest.approx(out['inst'], rel=1e-5)

@pytest.mark.parametrize('latents,prompts', [('batch', 'generic'), ('prior', 'class'), ('noise', 'empty'), ('replay', 'generic')])
def test_dc_sources(small, concept, prompt_file, tmp_path, latents, prompts):
    tr = Trainer(small, concept, cfg('lora', 'dc_pr', prompt_file=prompt_file, dc_latents=latents, dc_prompts=prompts,
                                     dc_replay_images=3), tmp_path)
    out = tr.train_step()
    assert np.isfinite(out['dc']) and 'prior' not in out
    assert (tr.data.class_data is not None) == (latents == 'prior')   # dc_pr generates class images only when DC needs them
    assert len(tr.reg_embeds) == {'generic': 2, 'class': 1, 'empty': 1}[prompts]

def test_prompts_are_encoded_once(small, concept, prompt_file, tmp_path, monkeypatch):
    tr = Trainer(small, concept, cfg('lora', prompt_file=prompt_file), tmp_path)
    calls = []
    monkeypatch.setattr(small.text_encoder, 'forward', lambda *a, **k: calls.append(1))
    monkeypatch.setattr(tr.text_encoder, 'forward', lambda *a, **k: calls.append(1))
    tr.train_step(); tr.train_step()
    assert calls == []


# ---- class images: cached and shared by every method and variant
def test_class_images_are_shared(small, concept, prompt_file, tmp_path, monkeypatch):
    Trainer(small, concept, cfg('dreambooth', 'plain', prompt_file=prompt_file), tmp_path / 'a')
    monkeypatch.setattr(T, '_sample', lambda *a, **k: pytest.fail('class images were generated again'))
    for m in METHODS3: Trainer(small, concept, cfg(m, 'dc', prompt_file=prompt_file), tmp_path / m)


def test_instance_latents_are_encoded_once_and_change_nothing(small, concept, prompt_file, tmp_path, monkeypatch):
    # the first run of a fresh home encodes the instance images; a second method's run reads them and encodes nothing,
    # and a run trained from the cache is the run trained without it (the same tensors and metadata; not the same file
    # bytes: safetensors writes the metadata's keys in no fixed order)
    monkeypatch.setenv('OPEN_FORGETTING_HOME', str(tmp_path / 'home'))
    first = customize(small, concept, cfg('lora', 'plain', prompt_file=prompt_file), out_dir=tmp_path / 'a')
    customize(small, concept, cfg('dreambooth', 'plain', prompt_file=prompt_file), out_dir=tmp_path / 'b')
    monkeypatch.setattr(T, 'encode_images', lambda *a, **k: pytest.fail('instance images were encoded again'))
    again = customize(small, concept, cfg('lora', 'plain', prompt_file=prompt_file), out_dir=tmp_path / 'c')
    (a, meta_a), (c, meta_c) = [(load_file(d / T.TRAINED_FILE), safe_open(d / T.TRAINED_FILE, 'pt').metadata()) for d in (first, again)]
    assert meta_a == meta_c and a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)


# ---- resume, reload, base mismatch
class _Stop(Exception): pass

@pytest.mark.parametrize('method', METHODS3)
def test_resume_equals_uninterrupted_run(small, concept, prompt_file, tmp_path, monkeypatch, method):
    c = cfg(method, prompt_file=prompt_file, max_steps=4, hflip=True)
    full = customize(small, concept, c, tmp_path / 'full')
    real_step = Trainer.train_step
    def interrupted(self):
        if self.step == 3: raise _Stop
        return real_step(self)
    monkeypatch.setattr(Trainer, 'train_step', interrupted)
    with pytest.raises(_Stop): customize(small, concept, c, tmp_path / 'resumed', checkpoint_every=2)
    assert [p.name for p in (tmp_path / 'resumed' / 'checkpoints').iterdir()] == ['step_000002']
    torch.manual_seed(1234); np.random.seed(99)                       # resume must not depend on the process state
    monkeypatch.setattr(Trainer, 'train_step', real_step)
    resumed = customize(small, concept, c, tmp_path / 'resumed', checkpoint_every=2)
    from safetensors.torch import load_file        # (compare tensors: safetensors' header order is not deterministic)
    a, b = load_file(Path(full) / 'trained.safetensors'), load_file(Path(resumed) / 'trained.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (Path(full) / 'history.csv').read_text() == (Path(resumed) / 'history.csv').read_text()

@pytest.mark.parametrize('method', METHODS3)
def test_saved_parameters_reload_to_identical_outputs(small, concept, prompt_file, tmp_path, method):
    tr = Trainer(small, concept, cfg(method, prompt_file=prompt_file), tmp_path)
    run = tr.run()
    loaded = load_customized(small, run)
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 700])
    prompts = [tr.instance_prompt, 'a photo of']
    e_student, e_loaded = encode_prompts(tr.student, prompts), encode_prompts(loaded, prompts)
    assert torch.equal(e_student, e_loaded)
    tr.student.unet.eval()
    with torch.no_grad():
        assert torch.equal(tr.student.unet(z, t, e_student).sample, loaded.unet(z, t, e_loaded).sample)
    # only the trained parameters are saved, with the configuration and the base fingerprint
    assert sorted(p.name for p in Path(run).iterdir()) == ['history.csv', 'run.json', 'trained.safetensors']
    info = json.loads((Path(run) / 'run.json').read_text())
    assert info['base_fingerprint'] == small.fingerprint() and info['config']['method'] == method
    from safetensors.torch import load_file
    assert set(load_file(Path(run) / 'trained.safetensors')) == set(tr.params)

def test_mismatched_base_is_refused(small, concept, prompt_file, tmp_path):
    run = customize(small, concept, cfg('lora', 'plain', prompt_file=prompt_file, max_steps=1), tmp_path)
    other = tiny_components(seed=1, channels=(8, 16), text_dim=16, norm_num_groups=4)
    with pytest.raises(BaseModelMismatchError, match='was trained from base model'): load_customized(other, run)
    with pytest.raises(FileNotFoundError, match='not a finished run'): load_customized(small, tmp_path / 'nothing')

def test_finished_run_is_reused_and_a_different_one_refused(small, concept, prompt_file, tmp_path, monkeypatch):
    c = cfg('lora', 'plain', prompt_file=prompt_file, max_steps=1)
    run = customize(small, concept, c, tmp_path)
    monkeypatch.setattr(Trainer, 'run', lambda self: pytest.fail('trained again'))
    assert customize(small, concept, c, tmp_path) == run
    with pytest.raises(FileExistsError, match='different finished run'): customize(small, concept, c, tmp_path, max_steps=2)


# ---- guards
def test_nan_guard_stops_and_keeps_last_good_checkpoint(small, concept, prompt_file, tmp_path, monkeypatch):
    calls = {'n': 0}
    real = T.loss_terms
    def poisoned(*a, **k):                                  # the instance term of step 3 becomes NaN
        calls['n'] += 1
        out = real(*a, **k)
        return {**out, 'inst': out['inst'] * float('nan')} if calls['n'] == 3 else out
    monkeypatch.setattr(T, 'loss_terms', poisoned)
    c = cfg('lora', 'dc_pr', prompt_file=prompt_file, max_steps=5, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r'step 3 .*Last good checkpoint: .*step_000002'):
        customize(small, concept, c, tmp_path)
    assert not (tmp_path / 'trained.safetensors').exists()
    assert [p.name for p in (tmp_path / 'checkpoints').iterdir()] == ['step_000002']
    from safetensors.torch import load_file
    last = load_file(tmp_path / 'checkpoints' / 'step_000002' / 'trainable.safetensors')
    assert all(torch.isfinite(v).all() for v in last.values())

def test_eight_bit_adam_needs_bitsandbytes(small, concept, prompt_file, tmp_path):
    try: import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match='bitsandbytes'):
            Trainer(small, concept, cfg('lora', prompt_file=prompt_file, use_8bit_adam=True), tmp_path)
    else: pytest.skip('bitsandbytes is installed')


# ---- engineering options
def test_bf16_mixed_precision_keeps_trainable_fp32_and_teacher_bf16(small, concept, prompt_file, tmp_path):
    tr = Trainer(small, concept, cfg('lora', prompt_file=prompt_file, mixed_precision='bf16'), tmp_path)
    assert all(p.dtype == torch.float32 for p in tr.params.values())
    assert next(tr.teacher.parameters()).dtype == torch.bfloat16
    assert tr.student.unet.conv_in.weight.dtype == torch.bfloat16        # frozen student weights in the training dtype
    assert np.isfinite(tr.train_step()['loss'])
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)                  # leave no bf16 accelerate state to later tests in this process

@pytest.mark.parametrize('method', ['lora', 'custom_diffusion'])   # custom_diffusion trains a text-encoder embedding too
def test_gradient_checkpointing_gives_the_same_update(small, concept, prompt_file, tmp_path, method):
    outs = []
    for gc in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            tr = Trainer(small, concept, cfg(method, prompt_file=prompt_file, gradient_checkpointing=gc), tmp_path / str(gc))
        # no deprecated call on the way (transformers 5 renamed the text encoder's gradient_checkpointing_enable)
        assert not [w for w in caught if 'deprecated' in str(w.message) and 'checkpointing' in str(w.message)], caught
        tr.train_step(); outs.append({k: v.detach().clone() for k, v in tr.params.items()})
    assert tr.trains_te == (method == 'custom_diffusion')
    for k in outs[0]: torch.testing.assert_close(outs[0][k], outs[1][k])

def test_validation_images(small, concept, prompt_file, tmp_path):
    run = customize(small, concept, cfg('lora', 'plain', prompt_file=prompt_file, max_steps=2, validation_every=2,
                                        validation_steps=2, validation_prompts=('a photo of {token} {class_noun}', 'a photo of')),
                    tmp_path)
    png = Path(run) / 'validation' / 'step_000002.png'
    assert png.exists() and Image.open(png).size == (2 * 32 + 3 * 2, 32 + 2 * 2)   # make_grid padding 2


# ---- plug-in methods
class _ConvOutOnly(CustomizationMethod):
    "A toy plug-in: only the UNet's output convolution trains, with its own extra loss term and start hook."
    defaults = dict(learning_rate=1e-2)
    started = 0
    def prepare(self, components, concept):
        components.unet.requires_grad_(False); components.unet.conv_out.requires_grad_(True)
    def on_train_start(self, trainer): type(self).started += 1
    def extra_loss_terms(self, trainer): return {'l2': 1e-3 * trainer.student.unet.conv_out.weight.pow(2).sum()}

def test_registered_plugin_method_trains_and_reloads(small, concept, prompt_file, tmp_path):
    register_method('conv_out_only', _ConvOutOnly)
    c = cfg('conv_out_only', prompt_file=prompt_file)
    assert c.learning_rate == 1e-3 and variant_config('conv_out_only').learning_rate == 1e-2
    run = customize(small, concept, c, tmp_path)
    assert _ConvOutOnly.started == 1 and 'l2' in (Path(run) / 'history.csv').read_text().splitlines()[0]
    loaded = load_customized(small, run)
    sd0, sd1 = small.unet.state_dict(), loaded.unet.state_dict()
    assert {k for k in sd0 if not torch.equal(sd0[k], sd1[k])} == {'conv_out.weight', 'conv_out.bias'}
    with pytest.raises(TypeError, match='CustomizationMethod subclass'): register_method('bad', object)
    T.METHODS.pop('conv_out_only')


# ---- configs and data
def test_variants():
    for m in METHODS3:
        plain, dc, dcpr = (variant_config(m, v) for v in VARIANTS)
        assert (plain.lambda_dc, plain.lambda_pr) == (0.0, 1.0) and plain.needs_class_images
        assert dc.lambda_dc > 0 and dc.lambda_pr == 1.0
        assert dcpr.lambda_dc > 0 and dcpr.lambda_pr == 0 and not dcpr.needs_class_images
    assert variant_config('custom_diffusion').hflip and variant_config('lora').learning_rate == 1e-4
    with pytest.raises(ValueError, match='variant'): variant_config('lora', 'dc-pr')
    with pytest.raises(TypeError, match='Unknown TrainConfig field'): variant_config('lora', steps=3)
    with pytest.raises(ValueError, match='mixed_precision'): TrainConfig(mixed_precision='fp8')

def test_instance_data_errors(tmp_path, small):
    with pytest.raises(FileNotFoundError, match='does not exist'): load_concept(tmp_path / 'missing', 'dog')
    f = _images(tmp_path / 'dog_x', n=1)
    with pytest.raises(ValueError, match=r'holds 1 image\(s\)'): load_concept(f, 'dog')
    _images(f, n=3)
    (f / 'caption.txt').write_text('a dog')
    with pytest.raises(ValueError, match='caption.txt'): load_concept(f, 'dog')
    (f / 'caption.txt').unlink(); (f / 'truncated.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    with pytest.raises(ValueError, match='truncated.png'): load_concept(f, 'dog')
    (f / 'truncated.png').unlink(); (f / '.DS_Store').write_bytes(b'junk')
    assert len(instance_image_files(f)) == 3                  # hidden files are ignored
    with pytest.raises(ValueError, match='pass class_noun'): load_concept(f)
    with pytest.raises(TypeError, match='class_noun'): ConceptSpec('x', None)
    with pytest.raises(ValueError, match='instance_dir'): Trainer(small, ConceptSpec('x', 'dog'), TrainConfig(), tmp_path)
    with pytest.raises(TypeError, match='ConceptSpec'): Trainer(small, {'name': 'x'}, TrainConfig(), tmp_path)
    c = load_concept(_images(tmp_path / 'dog6'))              # a DreamBench subject name: class and kind looked up
    assert (c.class_noun, c.kind) == ('dog', 'live')

def test_dreambench_table():
    s = dreambench_subjects()
    assert len(s) == 30 and sum(k == 'live' for _, k in s.values()) == 9
    assert s['rc_car'] == ('toy', 'object') and s['pink_sunglasses'][0] == 'glasses'


def test_v_prediction_model_with_min_snr_weighting(concept, prompt_file, tmp_path):
    v_model = tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4, prediction_type='v_prediction')
    tr = Trainer(v_model, concept, cfg('lora', prompt_file=prompt_file, snr_gamma=5.0), tmp_path)
    out = tr.train_step()
    assert all(np.isfinite(v) for v in out.values()) and out['dc'] < 1e-10


# ---- issue 19: progress through logging and accelerate's trackers, on the main process
def test_a_tracker_receives_every_steps_loss_terms_and_the_config(small, concept, prompt_file, tmp_path, caplog):
    from accelerate.tracking import GeneralTracker
    class Recorder(GeneralTracker):
        name, requires_logging_directory = 'recorder', False
        def __init__(self): super().__init__(); self.logged, self.config, self.finished = [], None, False
        @property
        def tracker(self): return self
        def store_init_configuration(self, values): self.config = values
        def log(self, values, step=None, **kwargs): self.logged.append((step, dict(values)))
        def finish(self): self.finished = True
    caplog.set_level('INFO', logger='open_forgetting.train')
    c = cfg('lora', 'dc_pr', prompt_file, max_steps=3, snr_gamma=5.0)
    rec = Recorder()
    tr = Trainer(small, concept, c, tmp_path, trackers=[rec]); tr.run()
    assert rec.logged == [(h['step'], {k: v for k, v in h.items() if k != 'step'}) for h in tr.history]
    assert [s for s, _ in rec.logged] == [1, 2, 3] and set(rec.logged[0][1]) == {'loss', 'inst', 'dc'}
    assert rec.config['lambda_dc'] == c.lambda_dc and rec.config['snr_gamma'] == 5.0 and rec.finished
    assert f'lora/dc_pr {concept.name}: 3 steps, final loss' in caplog.text          # the run's summary is a log record
    # log_with=None (the default): no tracker, nothing to install
    assert c.log_with is None and Trainer(small, concept, c, tmp_path / 'b').accelerator.trackers == []

def test_log_records_print_until_the_application_configures_logging(monkeypatch, capsys):
    import logging
    record = logging.LogRecord('open_forgetting.train', logging.INFO, __file__, 1, 'memory: a line', None, None)
    monkeypatch.setattr(logging.getLogger(), 'handlers', [])                 # an application that configured nothing
    T._UntilConfigured().handle(record)
    assert capsys.readouterr().out == 'memory: a line\n'
    monkeypatch.setattr(logging.getLogger(), 'handlers', [logging.NullHandler()])   # one that did: its handlers only
    T._UntilConfigured().handle(record)
    assert capsys.readouterr().out == ''
    assert any(isinstance(h, T._UntilConfigured) for h in logging.getLogger('open_forgetting.train').handlers)

def test_a_tracker_that_is_not_installed_is_named_and_skipped(small, concept, prompt_file, tmp_path):
    from accelerate.tracking import get_available_trackers
    if 'tensorboard' in {str(t) for t in get_available_trackers()}: pytest.skip('tensorboard is installed here')
    with pytest.warns(UserWarning, match=r"\['tensorboard'\] not installed"):
        tr = Trainer(small, concept, cfg('lora', 'plain', prompt_file, log_with=('tensorboard',)), tmp_path)
    assert tr.accelerator.trackers == [] and tr.train_step()['step'] == 1


def test_samples_decode_with_a_vae_in_another_dtype():
    "Class images sample when the VAE's dtype is not the UNet's (load_pretrained keeps it fp32 beside a bf16 model on a GPU: the first GPU run failed there); with one dtype they equal diffusers' own decode."
    from diffusers import DDIMScheduler
    from open_forgetting.models import sampling_scheduler, to_pipeline
    base, prompts, seeds = tiny_components(seed=0), ['a photo of a dog', 'a dog'], [0, 1]
    ours = T._sample(base, prompts, seeds, 2, 3.0, 'pt')
    pipe = to_pipeline(base); pipe.scheduler = sampling_scheduler(base.scheduler, DDIMScheduler)   # the pipeline decodes itself
    theirs = pipe(prompts, num_inference_steps=2, guidance_scale=3.0, generator=[torch.Generator().manual_seed(s) for s in seeds],
                  height=base.resolution, width=base.resolution, output_type='pt').images
    assert torch.equal(ours, theirs.float())
    base.vae.to(torch.float64)                  # a wider VAE on CPU stands in for fp32 beside bf16 on a GPU
    wide = T._sample(base, prompts, seeds, 2, 3.0, 'pt')
    assert wide.dtype == torch.float32 and torch.allclose(wide, ours, atol=1e-5) and not torch.equal(wide, ours)
    with pytest.raises(ValueError, match="output_type='pil'"): T._sample(base, prompts, seeds, 2, 3.0, 'pil')


def test_class_latents_depend_on_the_pixels_not_their_memory_layout():
    "The class images' latents are the encoding of the stored images, whatever layout the sampler left them in: the VAE's decoder returns channels-last images on a CPU, whose encoding rounded differently (~1e-6), so a change of decoding path changed DreamBooth-DC's demo numbers with the same pixels."
    from open_forgetting.models import encode_images
    base = tiny_components(seed=0)
    data = T.class_images(base, 'a dog', 3, steps=2, guidance=3.0, progress=False)
    pixels = data['images'].contiguous() * 2 - 1
    assert torch.equal(data['latents'], encode_images(base, pixels))
    assert torch.equal(data['latents_flipped'], encode_images(base, pixels.flip(-1)))
    assert torch.equal(encode_images(base, pixels.contiguous(memory_format=torch.channels_last)), data['latents'])


@pytest.mark.parametrize('method,variant', [('dreambooth', 'dc'), ('lora', 'plain'), ('custom_diffusion', 'dc'), ('hypermod', 'dc')])
def test_a_bf16_base_trains_and_its_model_classifies(tmp_path, concept, prompt_file, method, variant):
    "A bf16 base beside an fp32 VAE (load_components' default on a GPU) trains under bf16 autocast with fp32 trained parameters, leaves the base as it was, and its customized model generates and classifies; before, every step failed on the dtype mismatch."
    import pandas as pd
    from open_forgetting.models import save_components, load_components
    from open_forgetting.generate import generate, GenerationSettings
    from open_forgetting.classifier import classify, ClassifierConfig
    save_components(tiny_components(seed=0), tmp_path / 'base')
    base = load_components(tmp_path / 'base', dtype='bf16', device='cpu')
    assert (base.unet.dtype, base.text_encoder.dtype, base.vae.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
    fp = base.fingerprint()
    tiny_self_init = {'self_init': {'steps': 2, 'batch_size': 1, 'eval_batch_size': 1, 'prompt_limit': 2}} if method == 'hypermod' else {}
    run = customize(base, concept, cfg(method, variant, prompt_file, max_steps=2, dc_teacher_pool=4, method_settings=tiny_self_init),
                    out_dir=tmp_path / 'run')
    assert json.loads((run / 'run.json').read_text())['config']['mixed_precision'] == 'bf16' and base.fingerprint() == fp
    trained = load_file(run / 'trained.safetensors')
    assert trained and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in trained.values())
    model = load_customized(base, run)
    man = generate({'base': base, 'tuned': model}, ['a photo of a toy'], [0], GenerationSettings(steps=2, height=32, width=32),
                   root=tmp_path / 'gen', progress=False)
    assert len(man) == 2
    class Two(torch.utils.data.Dataset):
        classes, name, targets = ['toy', 'dog'], 'bf16-two', [0, 1]
        def __len__(self): return 2
        def __getitem__(self, i): return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), i
    prompts = pd.DataFrame(dict(classname=['toy', 'dog'], classidx=[0, 1], prompt=['a photo of a toy', 'a photo of a dog']))
    res = classify(model, Two(), prompts, ClassifierConfig(to_keep=(1,), n_samples=(4,), batch_size=8), cache=False, progress=False)
    assert res.pred.isin([0, 1]).all() and res.attrs['config']['batch_size'] == 8
