"""Self-contained calibration of the miniworld base model (issue 7), independent of the project classifier.

1. samples: generate a grid from the base model (DDIM, classifier-free guidance) and save it as PNG;
2. zero-shot accuracy: a minimal diffusion classifier (Li et al. 2023): per image, the eps-prediction L2 error
   for every class prompt at K shared (t, eps) pairs, mean over t, argmin; the same (t, eps) for every model;
3. forgetting sanity check: DreamBooth-style fine-tune of a copy of the UNet on the 5 images of a novel concept
   (plain, and with the Drift Correction term lambda * ||eps_student - eps_teacher||^2 on the same noised latents
   with generic prompts), then shape/colour accuracy drop and concept identification on 20 held-out views.

Usage: .venv/bin/python tools/calibrate_miniworld.py [--model data/miniworld/base] [--what samples,zeroshot,forget]
Writes data/miniworld/calibration.json and data/miniworld/samples.png (and prints everything).
"""
import argparse, copy, json, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from open_forgetting.core import repo_root
from open_forgetting.models import load_components, encode_images, encode_prompts, decode_latents
from open_forgetting.miniworld import (miniworld_dataset, miniworld_prompts, pil_to_tensor, concept_images,
                                       concept_heldout_views, generic_prompts, NOVEL_CONCEPTS, SHAPES, COLOURS, TEXTURES,
                                       BACKGROUNDS, render, sample_item)


def log(*a): print(*a, flush=True)


def grid(images, ncol, scale=3):
    w, h = images[0].size
    out = Image.new('RGB', (ncol * w, -(-len(images) // ncol) * h))
    for i, im in enumerate(images): out.paste(im, ((i % ncol) * w, (i // ncol) * h))
    return out.resize((out.width * scale, out.height * scale), Image.NEAREST)


@torch.no_grad()
def sample(comps, prompts, seed=0, steps=30, guidance=3.0, unet=None):
    "DDIM samples (PIL) of `prompts`, one seed per prompt index, classifier-free guidance."
    from diffusers import DDIMScheduler
    unet = unet or comps.unet
    sched = DDIMScheduler.from_config(comps.scheduler.config)
    sched.set_timesteps(steps)
    cond = encode_prompts(comps, prompts); unc = encode_prompts(comps, [''] * len(prompts))
    h = unet.config.sample_size
    z = torch.stack([torch.randn(4, h, h, generator=torch.Generator().manual_seed(seed + i)) for i in range(len(prompts))])
    for t in sched.timesteps:
        e = unet(torch.cat([z, z]), t, torch.cat([unc, cond])).sample
        eu, ec = e.chunk(2)
        z = sched.step(eu + guidance * (ec - eu), t, z).prev_sample
    x = (decode_latents(comps, z) + 1) / 2
    return [Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for i in range(len(x))]


def timestep_grid(n):
    T = 1000
    return torch.tensor([T // n // 2 + k * (T // n) for k in range(n)])


@torch.no_grad()
def eps_errors(comps, unet, latents, emb, n_t=20, seed=0):
    "Errors (N, C): mean over n_t shared (t, eps) of the mean squared eps-prediction error per class prompt."
    ts = timestep_grid(n_t)
    acp = comps.scheduler.alphas_cumprod
    a = acp[ts].view(-1, 1, 1, 1)
    C = emb.shape[0]
    out = torch.empty(len(latents), C)
    for i, z0 in enumerate(latents):
        eps = torch.randn((n_t,) + z0.shape, generator=torch.Generator().manual_seed(seed * 100003 + i))
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps  # (K, 4, h, w)
        zt_all = zt.repeat_interleave(C, 0); t_all = ts.repeat_interleave(C); e_all = emb.repeat(n_t, 1, 1)
        pred = unet(zt_all, t_all, e_all).sample
        err = ((pred - eps.repeat_interleave(C, 0)) ** 2).mean((1, 2, 3)).view(n_t, C)
        out[i] = err.mean(0)
    return out


def task_latents(comps, task, n_per_class, seed=0):
    ds = miniworld_dataset(task, 'test', n_per_class, seed)
    x = pil_to_tensor([ds[i][0] for i in range(len(ds))]) * 2 - 1
    return encode_images(comps, x), torch.tensor(ds.labels), ds.classes


def accuracy_report(err, labels, classes):
    pred = err.argmin(1)
    acc = float((pred == labels).float().mean())
    per_class = {c: float((pred[labels == j] == j).float().mean()) for j, c in enumerate(classes)}
    conf = torch.zeros(len(classes), len(classes), dtype=torch.long)
    for l, p in zip(labels.tolist(), pred.tolist()): conf[l, p] += 1
    return dict(accuracy=acc, chance=1 / len(classes), per_class=per_class, confusion=conf.tolist(),
                predicted_counts=torch.bincount(pred, minlength=len(classes)).tolist())


def zero_shot(comps, unet, tasks, n_per_class, n_t, cache):
    res = {}
    for task in tasks:
        t0 = time.time()
        if task not in cache: cache[task] = task_latents(comps, task, n_per_class)
        lat, labels, classes = cache[task]
        emb = encode_prompts(comps, miniworld_prompts(task).prompt.tolist())
        res[task] = accuracy_report(eps_errors(comps, unet, lat, emb, n_t), labels, classes)
        res[task]['seconds'] = time.time() - t0; res[task]['n_images'] = len(labels); res[task]['n_t'] = n_t
        log(f"  {task}: acc {res[task]['accuracy']:.3f} (chance {res[task]['chance']:.3f}) "
            f"per-class {({k: round(v, 2) for k, v in res[task]['per_class'].items()})} [{res[task]['seconds']:.0f} s]")
    return res


@torch.no_grad()
def replay_set(comps, n=48, seed=123, steps=25, guidance=3.0):
    "Z_reg as a replay set (00_method §3): latents the base model generates from the generic prompts, with their prompts."
    from diffusers import DDIMScheduler
    prompts = (generic_prompts(24) * (n // 24 + 1))[:n]
    sched = DDIMScheduler.from_config(comps.scheduler.config); sched.set_timesteps(steps)
    cond = encode_prompts(comps, prompts); unc = encode_prompts(comps, [''] * n)
    h = comps.unet.config.sample_size
    z = torch.randn(n, 4, h, h, generator=torch.Generator().manual_seed(seed))
    for t in sched.timesteps:
        eu, ec = comps.unet(torch.cat([z, z]), t, torch.cat([unc, cond])).sample.chunk(2)
        z = sched.step(eu + guidance * (ec - eu), t, z).prev_sample
    return z, cond


def finetune(comps, concept, steps=300, lr=1e-4, dc_lambda=0.0, batch=4, seed=0, identifier='sks', replay=None):
    "DreamBooth-style full-UNet fine-tune on the concept's 5 images; optional Drift Correction term (generic prompts)."
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    teacher = comps.unet
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    c = NOVEL_CONCEPTS[concept]
    z_inst = encode_images(comps, pil_to_tensor(concept_images(concept, 5)) * 2 - 1)
    c_inst = encode_prompts(comps, [c.prompt(identifier)])
    c_gen = encode_prompts(comps, generic_prompts(24))
    acp = comps.scheduler.alphas_cumprod
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    losses, dcs = [], []
    for step in range(steps):
        idx = torch.randint(len(z_inst), (batch,), generator=g)
        z0 = z_inst[idx]
        t = torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(student(zt, t, c_inst.expand(batch, -1, -1)).sample, eps)
        losses.append(loss.item())
        if dc_lambda > 0:
            if replay is None:  # Z_reg = the instance batch's noised latents, C_reg = random generic prompts
                cg, zr = c_gen[torch.randint(len(c_gen), (batch,), generator=g)], zt
            else:  # Z_reg = replay latents (base generations) noised at fresh t, with their own prompts
                j = torch.randint(len(replay[0]), (batch,), generator=g)
                tr = torch.randint(0, 1000, (batch,), generator=g); ar = acp[tr].view(-1, 1, 1, 1)
                zr = ar.sqrt() * replay[0][j] + (1 - ar).sqrt() * torch.randn(z0.shape, generator=g)
                cg, t = replay[1][j], tr
            with torch.no_grad(): target = teacher(zr, t, cg).sample
            dc = F.mse_loss(student(zr, t, cg).sample, target)
            dcs.append(dc.item())
            loss = loss + dc_lambda * dc
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    student.eval().requires_grad_(False)
    return student, dict(final_instance_loss=float(np.mean(losses[-50:])), final_dc_loss=float(np.mean(dcs[-50:])) if dcs else None)


@torch.no_grad()
def identify_concept(comps, unet, concept, n_t, identifier='sks'):
    "How many of 20 held-out views choose the concept's prompt among it and the 8 shape prompts."
    c = NOVEL_CONCEPTS[concept]
    prompts = [c.prompt(identifier)] + miniworld_prompts('shape').prompt.tolist()
    lat = encode_images(comps, pil_to_tensor(concept_heldout_views(concept, 20)) * 2 - 1)
    err = eps_errors(comps, unet, lat, encode_prompts(comps, prompts), n_t, seed=7)
    return int((err.argmin(1) == 0).sum())


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--model', default=str(repo_root() / 'data/miniworld/base'))
    p.add_argument('--what', default='samples,zeroshot,forget')
    p.add_argument('--tasks', default='shape,colour,texture,background')
    p.add_argument('--forget-tasks', default='shape,colour')
    p.add_argument('--n-per-class', type=int, default=12)
    p.add_argument('--n-t', type=int, default=20)
    p.add_argument('--concept', default='heart_emblem')
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--lambdas', default='10')
    p.add_argument('--dc-latents', default='instance,replay', help='Z_reg of the DC term: instance batch and/or replay set')
    p.add_argument('--skip', default='', help="e.g. 'DB' to skip the plain DreamBooth run")
    p.add_argument('--out', default=str(repo_root() / 'data/miniworld'))
    p.add_argument('--threads', type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    comps = load_components(a.model, dtype='fp32', device='cpu')
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    res_path = out / 'calibration.json'
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    res['model_fingerprint'] = comps.fingerprint()
    what = a.what.split(',')
    if 'samples' in what:
        t0 = time.time()
        rng = np.random.default_rng(0)
        prompts = [sample_item(rng, shape=s).caption for s in SHAPES for _ in range(2)]
        prompts += [f"a {s}" for s in SHAPES] + [f"a {c} shape" for c in COLOURS] + [f"a {t} shape" for t in TEXTURES] + ['']
        ims = sample(comps, prompts, seed=0)
        grid(ims, ncol=8, scale=3).save(out / 'samples.png')
        (out / 'samples_prompts.txt').write_text('\n'.join(prompts) + '\n')
        res['samples'] = dict(prompts=prompts, seconds=time.time() - t0, steps=30, guidance=3.0, sampler='DDIM')
        log(f"samples -> {out / 'samples.png'} ({time.time() - t0:.0f} s)")
    cache = {}
    if 'zeroshot' in what:
        log('zero-shot accuracy of the base model')
        res['zero_shot'] = zero_shot(comps, comps.unet, a.tasks.split(','), a.n_per_class, a.n_t, cache)
        res_path.write_text(json.dumps(res, indent=1))
    if 'forget' in what:
        ft = res.setdefault('forgetting', {})
        ft['settings'] = dict(concept=a.concept, steps=a.steps, lr=a.lr, batch=4, n_per_class=a.n_per_class, n_t=a.n_t,
                              dc_prompts='generic_prompts(24)', dc_latents=a.dc_latents)
        tasks = a.forget_tasks.split(',')
        zs = res.get('zero_shot', {}) if 'zeroshot' in what else {}
        missing = [t for t in tasks if t not in zs]
        base = ft['base'] = {**{t: zs[t] for t in tasks if t in zs}, **zero_shot(comps, comps.unet, missing, a.n_per_class, a.n_t, cache)}
        ft['base']['concept_views_identified'] = identify_concept(comps, comps.unet, a.concept, a.n_t)
        runs = [(0.0, None)] if 'DB' not in a.skip.split(',') else []
        runs += [(float(x), mode) for x in a.lambdas.split(',') for mode in a.dc_latents.split(',')]
        replay = replay_set(comps) if 'replay' in a.dc_latents else None
        for lam, mode in runs:
            name = 'DB' if lam == 0 else f'DB-DC(lambda={lam:g},Z_reg={mode})'
            t0 = time.time()
            unet, info = finetune(comps, a.concept, a.steps, a.lr, lam, replay=replay if mode == 'replay' else None)
            log(f"{name}: fine-tuned in {time.time() - t0:.0f} s {info}")
            r = zero_shot(comps, unet, tasks, a.n_per_class, a.n_t, cache)
            r['finetune'] = info; r['finetune_seconds'] = time.time() - t0
            for task in tasks: r[task]['drop_points'] = 100 * (base[task]['accuracy'] - r[task]['accuracy'])
            r['concept_views_identified'] = identify_concept(comps, unet, a.concept, a.n_t)
            log(f"{name}: drops {[round(r[t]['drop_points'], 1) for t in tasks]} points, concept views {r['concept_views_identified']}/20")
            ft[name] = r
            grid(sample(comps, [NOVEL_CONCEPTS[a.concept].prompt()] * 4 + [f"a {s}" for s in SHAPES[:4]], seed=0, unet=unet),
                 ncol=8).save(out / f"samples_{name.split('(')[0]}{'' if mode is None else '_' + mode}.png")
            res_path.write_text(json.dumps(res, indent=1))
    res_path.write_text(json.dumps(res, indent=1))
    log(json.dumps({k: v for k, v in res.items() if k != 'samples'}, indent=1)[:6000])


if __name__ == '__main__':
    main()
