"""Benchmark (not a test): open_forgetting's zero-shot classifier vs the reference loop, alternating runs.

Both classify the same images with the same model, the same prompts and the same noise (open_forgetting's paired noise
is handed to the reference loop as its `all_noise` tensor), so their predictions must be identical: the script asserts
it. The reference loop is Li et al.'s `eval_prob_adaptive` + `eval_error` line by line (flattened prompt x timestep
list, prompt-major, batch 32, fp32, one stage at a time; see the comment above it for the only differences). The two
implementations alternate (which one goes first alternates too), `--runs` timed runs each after a warm-up; it prints
median, min and max seconds per image, the thread count, the load average before and after, and the ratio of medians.
Measure only on a quiet machine (load average well below the core count).

    python benchmarks/classifier.py --threads 2                       # defaults: batch measured per device, prefix sharing on
    python benchmarks/classifier.py --threads 2 --no-share-prefix     # lever off: prefix sharing
    python benchmarks/classifier.py --threads 2 --batch-size 32       # lever off: measured batch size (try 32, 128, 550)
    python benchmarks/classifier.py --threads 2 --workers 1           # lever off: concurrent UNet calls (measured per device)
    python benchmarks/classifier.py --threads 2 --channels-last       # lever: channels-last
    python benchmarks/classifier.py --threads 2 --compile             # lever: torch.compile (inductor; eager if it fails)
    python benchmarks/classifier.py --device cuda --sd15 --compile    # GPU, SD-1.5-sized UNet (random weights), bf16, fraction of peak
    python benchmarks/classifier.py --threads 2 --miniworld-model --images 16   # the demo's model, prompts, images and schedule
    python benchmarks/classifier.py --n-samples 5 20 --runs 3         # a quick check of the script (not the protocol's schedule)
    python benchmarks/classifier.py --threads 2 --profile             # and where ours spends its time (operators' self time)

`--miniworld` measures instead how much classifying several images per UNet call helps a small model: the shipped
miniworld base model, the miniworld preset schedule (to_keep 2 1, n_samples 4 12, 8 shape prompts: 48 UNet samples
per image), 64 shape test images, one image per group (`images_per_batch=1`, the classifier before grouping) vs
the automatic group size; it prints images per second of each and asserts identical predictions.

    OMP_NUM_THREADS=1 python benchmarks/classifier.py --miniworld --threads 1
"""
import argparse, contextlib, math, os, sys, time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from open_forgetting.classifier import (ClassifierConfig, auto_batch_size, classify, evaluations_per_image, paired_noise, preprocess_image,
                                        schedule_for, stage_timesteps)
from open_forgetting.data import load_prompts
from open_forgetting.models import Components, encode_images, encode_prompts, sd_scheduler, tiny_components


# ---------------- the reference loop: Li et al.'s eval_prob_adaptive + eval_error, line by line ----------------
# Differences, none of which changes the arithmetic: `args` fields are parameters, n_trials is 1 (the protocol), the
# noise is passed as `all_noise` (the reference's --noise_path), fp32 (no .half() branch), no tqdm bar, and the
# device is the latent's.

def reference_eval_error(unet, alphas_cumprod, latent, all_noise, ts, noise_idxs, text_embeds, text_embed_idxs,
                         batch_size=32, loss='l2'):
    device = latent.device
    assert len(ts) == len(noise_idxs) == len(text_embed_idxs)
    pred_errors = torch.zeros(len(ts), device='cpu')
    idx = 0
    with torch.inference_mode():
        for _ in range(len(ts) // batch_size + int(len(ts) % batch_size != 0)):
            batch_ts = torch.tensor(ts[idx: idx + batch_size])
            noise = all_noise[noise_idxs[idx: idx + batch_size]]
            noised_latent = latent * (alphas_cumprod[batch_ts] ** 0.5).view(-1, 1, 1, 1).to(device) + \
                            noise * ((1 - alphas_cumprod[batch_ts]) ** 0.5).view(-1, 1, 1, 1).to(device)
            t_input = batch_ts.to(device)
            text_input = text_embeds[text_embed_idxs[idx: idx + batch_size]]
            noise_pred = unet(noised_latent, t_input, encoder_hidden_states=text_input).sample
            if loss == 'l2': error = F.mse_loss(noise, noise_pred, reduction='none').mean(dim=(1, 2, 3))
            elif loss == 'l1': error = F.l1_loss(noise, noise_pred, reduction='none').mean(dim=(1, 2, 3))
            elif loss == 'huber': error = F.huber_loss(noise, noise_pred, reduction='none').mean(dim=(1, 2, 3))
            else: raise NotImplementedError
            pred_errors[idx: idx + len(batch_ts)] = error.detach().cpu()
            idx += len(batch_ts)
    return pred_errors


def reference_classify(unet, alphas_cumprod, latent, text_embeds, all_noise, n_samples, to_keep, loss, batch_size=32):
    "eval_prob_adaptive with n_trials=1: per stage, the flattened prompt-major (prompt, new timestep) list in batches."
    T = len(alphas_cumprod)
    max_n_samples = max(n_samples)
    data = dict()
    t_evaluated = set()
    remaining_prmpt_idxs = list(range(len(text_embeds)))
    start = T // max_n_samples // 2
    t_to_eval = list(range(start, T, T // max_n_samples))[:max_n_samples]
    for n, n_to_keep in zip(n_samples, to_keep):
        ts, noise_idxs, text_embed_idxs = [], [], []
        curr_t_to_eval = t_to_eval[len(t_to_eval) // n // 2::len(t_to_eval) // n][:n]
        curr_t_to_eval = [t for t in curr_t_to_eval if t not in t_evaluated]
        for prompt_i in remaining_prmpt_idxs:
            for t_idx, t in enumerate(curr_t_to_eval, start=len(t_evaluated)):
                ts.extend([t]); noise_idxs.extend([t_idx]); text_embed_idxs.extend([prompt_i])
        t_evaluated.update(curr_t_to_eval)
        pred_errors = reference_eval_error(unet, alphas_cumprod, latent, all_noise, ts, noise_idxs, text_embeds,
                                           text_embed_idxs, batch_size, loss)
        for prompt_i in remaining_prmpt_idxs:                 # match up computed errors to the data
            mask = torch.tensor(text_embed_idxs) == prompt_i
            prompt_ts, prompt_pred_errors = torch.tensor(ts)[mask], pred_errors[mask]
            if prompt_i not in data: data[prompt_i] = dict(t=prompt_ts, pred_errors=prompt_pred_errors)
            else:
                data[prompt_i]['t'] = torch.cat([data[prompt_i]['t'], prompt_ts])
                data[prompt_i]['pred_errors'] = torch.cat([data[prompt_i]['pred_errors'], prompt_pred_errors])
        errors = [-data[prompt_i]['pred_errors'].mean() for prompt_i in remaining_prmpt_idxs]
        best_idxs = torch.topk(torch.tensor(errors), k=n_to_keep, dim=0).indices.tolist()
        remaining_prmpt_idxs = [remaining_prmpt_idxs[i] for i in best_idxs]
    assert len(remaining_prmpt_idxs) == 1
    return remaining_prmpt_idxs[0]


# ---------------- models ----------------

def sd15_components(device, dtype) -> Components:
    "An SD-1.5-sized UNet from its published config (UNet2DConditionModel defaults, cross_attention_dim=768, sample_size=64), random weights; small VAE/text encoder."
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from open_forgetting.models import build_clip_tokenizer
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    tok = build_clip_tokenizer(words=[w.strip('.') for p in load_prompts('cifar10').prompt for w in p.split()])
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=1024, num_hidden_layers=1,
                                      num_attention_heads=12, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=('DownEncoderBlock2D',) * 4,
                        up_block_types=('UpDecoderBlock2D',) * 4, norm_num_groups=4, latent_channels=4, sample_size=512)
    c = Components(unet, vae, te, tok, sd_scheduler(), source='sd15-config-random').eval()
    c.unet.to(device, dtype); c.text_encoder.to(device); c.vae.to(device)
    return c


def unet_flops_per_sample(unet, latent_shape, text_dim, device, dtype) -> float:
    "FLOPs of one UNet sample, counted by torch's FlopCounterMode."
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(2, *latent_shape, device=device, dtype=dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        unet(x, torch.tensor([10, 20], device=device), encoder_hidden_states=torch.randn(2, 77, text_dim, device=device, dtype=dtype))
    return fc.get_total_flops() / 2


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n, n_classes, size): self.n, self.classes, self.size = n, [f'c{i}' for i in range(n_classes)], size
    name = 'bench-random'
    @property
    def targets(self): return [i % len(self.classes) for i in range(self.n)]
    def __len__(self): return self.n
    def __getitem__(self, i): return torch.rand(3, self.size, self.size, generator=torch.Generator().manual_seed(i)), i % len(self.classes)


def miniworld_groups(args):
    "Images per second on the miniworld base model: one image per UNet-call group vs the automatic group size."
    from dataclasses import replace
    from open_forgetting.classifier import image_group_size
    from open_forgetting.miniworld import load_miniworld_base, miniworld_dataset, miniworld_prompts
    comps = load_miniworld_base(device=args.device)
    prompts, ds = miniworld_prompts('shape'), miniworld_dataset('shape', 'test', n_per_class=args.images // 8 if args.images else 8)
    cfg = ClassifierConfig(to_keep=(2, 1), n_samples=(4, 12), batch_size=256 if args.batch_size == 'auto' else int(args.batch_size))
    auto = image_group_size(cfg, len(prompts))
    print(f'device={args.device} threads={torch.get_num_threads()} model=miniworld base '
          f'({sum(p.numel() for p in comps.unet.parameters()) / 1e6:.1f} M UNet parameters) schedule {cfg.to_keep}/{cfg.n_samples}: '
          f'{evaluations_per_image(cfg, len(prompts))} UNet evals/image, {len(ds)} images, batch {cfg.batch_size}', flush=True)
    sync = torch.cuda.synchronize if args.device.startswith('cuda') else (lambda: None)
    classify(comps, miniworld_dataset('shape', 'test', n_per_class=1), prompts, cfg, cache=False, progress=False)   # warm-up
    rows, preds = [], {}
    for _ in range(args.repeats):            # alternate the two settings so a busy machine affects both alike
        for name, ipb in (('one image per group (before)', 1), (f'{auto} images per group (after)', None)):
            sync(); t0 = time.perf_counter()
            res = classify(comps, ds, prompts, replace(cfg, images_per_batch=ipb), cache=False, progress=False)
            sync(); t = time.perf_counter() - t0
            rows.append(dict(setting=name, images_per_s=len(ds) / t)); preds.setdefault(name, res.pred.tolist())
            assert res.pred.tolist() == next(iter(preds.values())), 'grouping changed a prediction'
    df = pd.DataFrame(rows).groupby('setting', sort=False).images_per_s.agg(['median', 'min', 'max'])
    print(df.rename(columns=lambda c: f'images/s {c}').to_string(float_format=lambda v: f'{v:.3g}'))
    before, after = df['median'].iloc[0], df['median'].iloc[1]
    print(f'speed-up (median images/s, after / before): {after / before:.2f}x; predictions identical: True')


def _stats(times):
    return dict(median=float(np.median(times)), min=float(np.min(times)), max=float(np.max(times)))


def run_reference(comps, ds, prompts, cfg, ref_batch_size, device, autocast, seed=0):
    "The reference's per-image loop: prompts encoded once, each image encoded, paired noise as its `all_noise`."
    text = encode_prompts(comps, prompts.prompt.tolist()).to(device)
    preds = []
    for i in range(len(ds)):
        img, _ = ds[i]
        z0 = encode_images(comps, preprocess_image(img, comps.resolution)[None].to(device)).float()
        noise = paired_noise(seed, i, max(cfg.n_samples), z0.shape[1:]).to(device)
        with autocast():
            p = reference_classify(comps.unet, comps.scheduler.alphas_cumprod, z0, text, noise, cfg.n_samples, cfg.to_keep,
                                   cfg.loss, ref_batch_size)
        preds.append(int(prompts.classidx[p]))
    return preds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cpu'); ap.add_argument('--sd15', action='store_true')
    ap.add_argument('--images', type=int, default=None, help='images to classify per timed run (default 2 on CPU, 4 on GPU)')
    ap.add_argument('--batch-size', default='auto', help="open_forgetting's UNet batch: an integer or 'auto' (measured per device, the default)")
    ap.add_argument('--no-share-prefix', action='store_true', help='lever off: run the prompt-independent UNet prefix once per prompt')
    ap.add_argument('--workers', default='auto', help="UNet calls at once, each on threads / workers: an integer or 'auto' (measured per device, the default)")
    ap.add_argument('--channels-last', action='store_true', help='lever: channels-last UNet and inputs')
    ap.add_argument('--compile', action='store_true', help='lever: torch.compile the UNet (eager fallback when it fails)')
    ap.add_argument('--ref-batch-size', type=int, default=32); ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--runs', type=int, default=3, help='timed runs of each implementation, alternating (>= 3)')
    ap.add_argument('--n-samples', type=int, nargs='+', default=None, help='override the CIFAR-10 schedule (a quick check)')
    ap.add_argument('--dtype', default=None, help='GPU compute dtype (default bf16)')
    ap.add_argument('--peak-tflops', type=float, default=None, help='bf16 dense peak of the GPU (default: H100/H200 989, A100 312)')
    ap.add_argument('--miniworld', action='store_true', help='images/s of one image per group vs grouped images on the miniworld model')
    ap.add_argument('--miniworld-model', action='store_true', help='ours vs the reference on the shipped miniworld base model, '
                    'its shape prompts and images and the miniworld study schedule (2 1 / 4 12) instead of the tiny model on CIFAR-10')
    ap.add_argument('--repeats', type=int, default=3, help='--miniworld: timed runs of each setting (median reported)')
    ap.add_argument('--profile', action='store_true', help="after the timed runs, where ours spends its time: torch.profiler's "
                    'top operators over one image (self time)')
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    if args.miniworld: return miniworld_groups(args)
    device = torch.device(args.device)
    gpu = device.type == 'cuda'
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}[args.dtype or ('bf16' if gpu else 'fp32')]
    prompts = load_prompts('cifar10')
    n_images = args.images or (4 if gpu else 2)
    over = dict(n_samples=tuple(args.n_samples)) if args.n_samples else {}
    if args.miniworld_model:
        from open_forgetting.miniworld import load_miniworld_base, miniworld_dataset, miniworld_prompts
        comps, prompts = load_miniworld_base(device=args.device), miniworld_prompts('shape')
        over = dict(to_keep=(2, 1), n_samples=(4, 12), loss='l1', **over)
    elif args.sd15: comps = sd15_components(device, dtype if gpu else torch.float32)
    else: comps = tiny_components(seed=0, words=[w.strip(".") for p in prompts.prompt for w in p.split()])
    if not (args.sd15 or args.miniworld_model) and device.type != "cpu": comps.to(device)
    cfg = schedule_for('cifar10', batch_size=None if args.batch_size == 'auto' else int(args.batch_size), compile=args.compile,
                       workers=None if args.workers == 'auto' else int(args.workers),
                       share_prefix=not args.no_share_prefix, channels_last=args.channels_last,
                       dtype=None if not gpu else {torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.float32: 'fp32'}[dtype], **over)
    if args.miniworld_model:
        ds = miniworld_dataset('shape', 'test', n_per_class=max(1, -(-n_images // len(prompts))))
        ds = torch.utils.data.Subset(ds, range(n_images)); ds.classes = ds.dataset.classes
    else: ds = RandomImages(n_images, 10, comps.resolution)
    autocast = (lambda: torch.autocast('cuda', dtype=dtype)) if gpu and dtype != torch.float32 else contextlib.nullcontext
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    evals = evaluations_per_image(cfg, len(prompts))

    if args.batch_size == 'auto':   # measured now, on this machine (a cached measurement from a busy machine is not reused)
        text_shape = tuple(encode_prompts(comps, prompts.prompt.tolist()[:1]).shape[1:])
        side = comps.unet.config.sample_size
        auto_batch_size(comps.unet, (comps.unet.config.in_channels, side, side), text_shape, device, dtype, autocast, refresh=True)
    # warm-up: first-call allocations, cuDNN autotune, compile
    warm = replace(cfg, n_samples=(2, 4), to_keep=(2, 1))
    got = classify(comps, RandomImages(1, prompts.classidx.nunique(), comps.resolution), prompts, warm, cache=False, progress=False)
    run_reference(comps, RandomImages(1, prompts.classidx.nunique(), comps.resolution), prompts, warm, args.ref_batch_size, device, autocast)
    batch, workers = got.attrs['config']['batch_size'], got.attrs['config']['workers']
    print(f'device={device} threads={torch.get_num_threads()} model={"miniworld base" if args.miniworld_model else "SD-1.5-sized UNet (random)" if args.sd15 else "tiny"} '
          f'schedule={"miniworld" if args.miniworld_model else "cifar10"} {cfg.to_keep}/{cfg.n_samples} {cfg.loss}: {evals} UNet evals/image, {n_images} images per run, '
          f'{args.runs} alternating runs each; ours: batch {batch} ({args.batch_size}), workers {workers} ({args.workers}), share_prefix={cfg.share_prefix}, '
          f'channels_last={cfg.channels_last}, compile={cfg.compile}; reference: batch {args.ref_batch_size}, fp32 on CPU', flush=True)
    print(f'load average before: {os.getloadavg()}', flush=True)
    times, preds = {'open_forgetting': [], 'reference loop': []}, {}
    for r in range(args.runs):
        order = list(times) if r % 2 == 0 else list(times)[::-1]          # alternate which goes first
        for name in order:
            sync(); t0 = time.perf_counter()
            if name == 'open_forgetting': p = classify(comps, ds, prompts, cfg, cache=False, progress=False).pred.tolist()
            else: p = run_reference(comps, ds, prompts, cfg, args.ref_batch_size, device, autocast)
            sync(); times[name].append((time.perf_counter() - t0) / n_images)
            preds.setdefault(name, p)
            assert p == preds[name], f'{name}: predictions changed between runs'
    print(f'load average after: {os.getloadavg()}')
    same = preds['open_forgetting'] == preds['reference loop']
    print(f"predictions identical: {same} (ours {preds['open_forgetting']}, reference {preds['reference loop']})")
    rows = [dict(implementation=k, **{f's/image {a}': b for a, b in _stats(v).items()},
                 unet_evals_per_s=evals / float(np.median(v))) for k, v in times.items()]
    df = pd.DataFrame(rows).set_index('implementation')
    if gpu:
        flops = unet_flops_per_sample(comps.unet, (4, comps.unet.config.sample_size, comps.unet.config.sample_size),
                                      comps.unet.config.cross_attention_dim, device, dtype)
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or (989.0 if ('H100' in name or 'H200' in name) else 312.0 if 'A100' in name else float('nan'))
        df['TFLOP/s'] = df.unet_evals_per_s * flops / 1e12
        df['fraction_of_bf16_peak'] = df['TFLOP/s'] / peak
        print(f'{name}: {flops / 1e9:.0f} GFLOP per UNet sample, bf16 dense peak {peak} TFLOP/s')
    print(df.to_string(float_format=lambda v: f'{v:.4g}'))
    ratio = np.median(times['reference loop']) / np.median(times['open_forgetting'])
    print(f'speed-up (median reference time / median ours): {ratio:.2f}x')
    assert same, 'open_forgetting and the reference loop disagree on a prediction'
    if args.profile: profile_ours(comps, torch.utils.data.Subset(ds, [0]), prompts, cfg)


def profile_ours(comps, ds, prompts, cfg, top: int = 12):
    "Self time per operator while ours classifies `ds`: what a faster classifier would have to make faster."
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    ds.classes = getattr(ds.dataset, 'classes', None)
    with profile(activities=acts) as prof: classify(comps, ds, prompts, cfg, cache=False, progress=False)
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev)
    print(f'profile of ours over one image ({total / 1e6:.1f} s of operator self time on the CPU):')
    for e in ev[:top]: print(f'  {e.self_cpu_time_total / total:6.1%}  {e.count:6d} calls  {e.key}')


if __name__ == '__main__':
    main()
