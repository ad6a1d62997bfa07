#!/usr/bin/env python
"""Why does Drift Correction make LoRA drift *more* at lr 1e-3 (data/miniworld/lab/README.md, "LoRA's frontier")?
A probe of one hypothesis, at the level of the UNet's predictions rather than of generated images.

The hypothesis. The laboratory's DC regularizes on the empty prompt (`dc_prompts: empty`): it pins the model's
*unconditional* prediction ε(x_t, ∅) to the base's. Generation uses classifier-free guidance,
ε(∅) + w·(ε(c) − ε(∅)) with w = 3. If a plain LoRA moves ε(c) and ε(∅) alike (its adapters on to_k / to_v change how
every text token is read, the empty prompt's included), much of the move cancels in ε(c) − ε(∅); if DC holds ε(∅) at the
base while ε(c) still moves, the difference moves by the whole of ε(c)'s move and guidance multiplies it by w.

What it measures. Each laboratory configuration named is trained again (same study, same overrides as
`tools/run_lab.py`, training seed 0) into `--runs` (finished runs are reused); then, on the world's generic prompts at
noised latents of rendered world images (the same latents, timesteps and noise for every model), the change against
the base of: ε(∅), ε(c), ε(c) − ε(∅) and the guided prediction, each as the root-mean-square change relative to the
root-mean-square of the base's own quantity, averaged over prompts, images and timesteps (mean ± s.e. over prompts).

    OMP_NUM_THREADS=1 .venv/bin/python tools/dc_guidance_probe.py --configs lora-lr-1e-3 --concepts heart_emblem
"""
import argparse, sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_lab import CONFIGS, STUDY   # noqa: E402  (the laboratory's configurations, one definition)


def noised_latents(base, n_images: int, timesteps, seed: int = 0):
    "Rendered shape-test images encoded by the base's VAE, noised at each timestep: x_t `(n·T, C, h, w)` and t `(n·T,)`."
    from open_forgetting.classifier import preprocess_image
    from open_forgetting.miniworld import miniworld_dataset
    from open_forgetting.models import encode_images
    ds = miniworld_dataset('shape', 'test', n_per_class=max(1, n_images // 8))
    imgs = torch.stack([preprocess_image(ds[i][0], base.resolution) for i in range(min(n_images, len(ds)))])
    with torch.no_grad(): z0 = encode_images(base, imgs).float()
    g = torch.Generator().manual_seed(seed)
    acp = base.scheduler.alphas_cumprod.float()
    t = torch.tensor(timesteps).repeat(len(z0))
    z = z0.repeat_interleave(len(timesteps), 0)
    a = acp[t].view(-1, 1, 1, 1)
    return a.sqrt() * z + (1 - a).sqrt() * torch.randn(z.shape, generator=g), t


@torch.no_grad()
def predictions(model, x_t, t, text, batch: int = 64):
    "ε(x_t, t, text) for every row, in batches (text `(1, L, D)` broadcast)."
    out = [model.unet(x_t[i:i + batch], t[i:i + batch], encoder_hidden_states=text.expand(len(x_t[i:i + batch]), -1, -1)).sample
           for i in range(0, len(x_t), batch)]
    return torch.cat(out).float()


def probe(models: dict, prompts, x_t, t, w: float) -> pd.DataFrame:
    "Relative RMS change against models['base'] of ε(∅), ε(c), ε(c) − ε(∅) and the guided prediction, per model × prompt."
    from open_forgetting.models import encode_prompts
    rel = lambda a, b: float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())
    rows, unc = [], {}
    for name, m in models.items(): unc[name] = predictions(m, x_t, t, encode_prompts(m, ['']))
    for p in prompts:
        cond = {name: predictions(m, x_t, t, encode_prompts(m, [p])) for name, m in models.items()}
        for name in models:
            if name == 'base': continue
            u, c, bu, bc = unc[name], cond[name], unc['base'], cond['base']
            rows.append(dict(model=name, prompt=p, uncond=rel(u, bu), cond=rel(c, bc), difference=rel(c - u, bc - bu),
                             guided=rel(u + w * (c - u), bu + w * (bc - bu))))
    return pd.DataFrame(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--configs', default='lora-lr-1e-3', help='comma-separated laboratory configurations (run_lab.CONFIGS), each plain and dc')
    ap.add_argument('--concepts', default='heart_emblem')
    ap.add_argument('--runs', default='/tmp/dc_guidance_probe', help='folder of the training runs (reused when finished)')
    ap.add_argument('--images', type=int, default=16); ap.add_argument('--timesteps', default='100,300,500,700,900')
    ap.add_argument('--out', default=None, help='CSV of the per-model × prompt rows')
    a = ap.parse_args(argv)
    from open_forgetting.study import check_cell, load_base, load_study_model
    rows = []
    for config in a.configs.split(','):
        cfg = CONFIGS[config]
        for concept in a.concepts.split(','):
            sets = {**cfg['set'], 'training.settings.seed': 0}
            study = check_cell(str(STUDY), sets, concept, cfg['methods'][0], 'plain')
            base = load_base(study)
            run_dir = Path(a.runs) / config
            models = {'base': base}
            for variant in ('plain', 'dc'):
                print(f'# {config} {concept} {variant}: training (or reusing) into {run_dir}', flush=True)
                models[variant] = load_study_model(check_cell(str(STUDY), sets, concept, cfg['methods'][0], variant), run_dir,
                                                   concept, cfg['methods'][0], variant)
            x_t, t = noised_latents(base, a.images, [int(s) for s in a.timesteps.split(',')])
            w = study.generation_settings().guidance_scale
            df = probe(models, study.world.generic_prompts(study), x_t, t, w)
            rows.append(df.assign(config=config, concept=concept, guidance_scale=w))
    out = pd.concat(rows, ignore_index=True)
    if a.out: out.to_csv(a.out, index=False)
    q = ['uncond', 'cond', 'difference', 'guided']
    g = out.groupby(['config', 'concept', 'model'])[q]
    print('relative RMS change against the base (mean over prompts ± s.e.):')
    print((g.mean().round(3).astype(str) + ' ± ' + g.sem().round(3).astype(str)).to_string())


if __name__ == '__main__':
    main()
