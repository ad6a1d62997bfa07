"""Loaded components never change after loading (issue 21 item 2): a folder whose scheduler config predates diffusers'
clip_sample / steps_offset fix-up keeps its fingerprint through training, generation, classification and
`to_pipeline`; and our samplers compute what diffusers' StableDiffusionPipeline computes for that folder."""
import json

import pandas as pd
import pytest
import torch

from open_forgetting.classifier import ClassifierConfig, classify
from open_forgetting.generate import GenerationSettings, generate, initial_latents, latent_shape, make_scheduler, sample
from open_forgetting.models import load_components, save_components, tiny_components, to_pipeline
from open_forgetting.train import customize, load_customized, variant_config

torch.set_num_threads(1)

OLD = dict(clip_sample=True, steps_offset=0)   # what a plain DDPMScheduler(...).save_pretrained of SD's betas writes


def _old_folder(path):
    "A tiny model saved by `save_components`, then its scheduler config overwritten with the outdated settings."
    save_components(tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4), path)
    f = path / 'scheduler' / 'scheduler_config.json'
    f.write_text(json.dumps({**json.loads(f.read_text()), **OLD}))
    return path


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return _old_folder(tmp_path_factory.mktemp('old_scheduler') / 'm')


@pytest.fixture
def base(folder):
    "A fresh load per test: a test that mutates it must not hide the mutation from the next one."
    return load_components(folder, dtype='fp32', device='cpu')


def _state(m):
    return m.fingerprint(), dict(m.scheduler.config), dict(m.unet.config)


def test_loader_reads_the_scheduler_config_as_written(base):
    assert base.scheduler.config.clip_sample is True and base.scheduler.config.steps_offset == 0


def test_to_pipeline_leaves_the_components_alone(base):
    before = _state(base)
    pipe = to_pipeline(base)
    assert _state(base) == before
    # the pipeline samples with diffusers' fix-up, on its own scheduler; the networks are shared, not copied
    assert pipe.scheduler is not base.scheduler and pipe.scheduler.config.clip_sample is False and pipe.scheduler.config.steps_offset == 1
    assert pipe.unet is base.unet and pipe.vae is base.vae and pipe.text_encoder is base.text_encoder


def test_to_pipeline_puts_back_an_old_unet_config(base):
    "diffusers rewrites sample_size < 64 to 64 for UNets saved by diffusers < 0.9; the caller's UNet keeps its own."
    from diffusers.configuration_utils import FrozenDict
    base.unet._internal_dict = FrozenDict({**base.unet.config, '_diffusers_version': '0.8.0'})
    before = _state(base)
    assert base.unet.config.sample_size == 16
    to_pipeline(base)
    assert _state(base) == before and base.unet.config.sample_size == 16


class Blobs(torch.utils.data.Dataset):
    "2 classes of seeded noisy images in [0, 1]."
    classes, name, targets = ['photo', 'blurry'], 'blobs', [0, 1]
    fingerprint = 'blobs-immutable-v1'
    def __len__(self): return 2
    def __getitem__(self, i): return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), i


def test_nothing_mutates_a_loaded_base_and_its_run_loads(folder, base, concept, tmp_path):
    before = _state(base)
    to_pipeline(base)
    assert _state(base) == before, 'to_pipeline'
    generate(base, ['a photo of'], [0], GenerationSettings(steps=2), cache=False, progress=False)
    assert _state(base) == before, 'generate'
    prompts = pd.DataFrame(dict(prompt=['a photo of', 'a blurry photo of'], classname=['photo', 'blurry'], classidx=[0, 1]))
    classify(base, Blobs(), prompts, ClassifierConfig(to_keep=(1,), n_samples=(2,), batch_size=4), cache=False, progress=False)
    assert _state(base) == before, 'classify'
    p = tmp_path / 'pool.txt'; p.write_text('a photo of\na blurry photo of\n')
    c = variant_config('dreambooth', 'dc', max_steps=2, num_class_images=1, class_sampling_steps=2, dc_n_reg=1,
                       progress=False, learning_rate=1e-3, dc_prompt_file=str(p))
    run = customize(base, concept, c, tmp_path / 'run')
    assert _state(base) == before, 'customize'
    tuned = load_customized(base, run)                       # the base is accepted as the one trained from
    assert _state(base) == before, 'load_customized'
    assert tuned.scheduler is not base.scheduler
    # and a fresh load of the same folder is accepted too: the fingerprint is the folder's, not a session's
    load_customized(load_components(folder, dtype='fp32', device='cpu'), run)


def _diffusers_images(folder, scheduler_name, prompts, seeds, steps, guidance, fixed=True):
    "Images of diffusers' own pipeline loaded from `folder`, sampler swapped the way diffusers documents it."
    import diffusers
    from open_forgetting.generate import _SCHEDULERS
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    cls = getattr(diffusers, _SCHEDULERS[scheduler_name])
    kw = {'dpm': {'algorithm_type': 'dpmsolver++'}, 'pndm': {'skip_prk_steps': True}}.get(scheduler_name, {})
    cfg = pipe.scheduler.config if fixed else {**pipe.scheduler.config, **OLD}
    pipe.scheduler = cls.from_config(cfg, **kw)
    comps = load_components(folder, dtype='fp32', device='cpu')
    latents = initial_latents(seeds, latent_shape(comps, GenerationSettings()))
    return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, latents=latents, output_type='pt').images


@pytest.mark.parametrize('scheduler', ['ddim', 'euler'])
def test_our_sampler_matches_the_diffusers_pipeline_for_an_old_folder(folder, base, scheduler):
    prompts, seeds, steps, w = ['a photo of', 'a blurry photo of'], [0, 1], 4, 3.0
    ours = sample(base, prompts, seeds, GenerationSettings(scheduler=scheduler, steps=steps, guidance_scale=w))
    theirs = _diffusers_images(folder, scheduler, prompts, seeds, steps, w)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    # the comparison can fail: sampling with the folder's settings as written (no fix-up) gives other images
    unfixed = _diffusers_images(folder, scheduler, prompts, seeds, steps, w, fixed=False)
    assert (unfixed - theirs).abs().max() > 1e-3
    assert make_scheduler(scheduler, base).config.steps_offset == 1 and base.scheduler.config.steps_offset == 0


def test_single_file_with_an_old_config_folder_keeps_the_folder_scheduler(folder, base, tmp_path):
    "diffusers' from_single_file builds a pipeline (which repairs its scheduler); we keep the config folder's as written."
    from safetensors.torch import save_file
    from test_interop import original_layout
    save_file(original_layout(base), str(tmp_path / 'tuned.safetensors'))
    back = load_components(tmp_path / 'tuned.safetensors', config=folder, device='cpu', dtype='fp32')
    assert dict(back.scheduler.config) == dict(base.scheduler.config) and back.fingerprint() == base.fingerprint()
