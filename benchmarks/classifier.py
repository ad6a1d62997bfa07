"""Benchmark (not a test): open_forgetting's zero-shot classifier vs a plain implementation of the reference loop.

Both classify the same images with the same model, the same prompts and the same noise (open_forgetting's paired noise
is handed to the reference loop as its `all_noise` tensor), so their predictions must be identical: the script asserts
it. The reference loop mimics Li et al.'s `eval_prob_adaptive` + `eval_error`: per stage it flattens prompt x new
timestep pairs (prompt-major), runs them through the UNet in batches of 32 and collects errors per prompt with masks.
It prints seconds per image, UNet evaluations per second and the ratio.

    python benchmarks/classifier.py                       # CPU, tiny model, CIFAR-10 schedule (10 prompts, 2,750 evals/image)
    python benchmarks/classifier.py --threads 1           # the same, single-threaded
    python benchmarks/classifier.py --device cuda --sd15  # GPU, SD-1.5-sized UNet (random weights), bf16, fraction of peak

`--miniworld` measures instead how much classifying several images per UNet call helps a small model: the shipped
miniworld base model, the miniworld preset schedule (to_keep 2 1, n_samples 4 12, 8 shape prompts: 48 UNet samples
per image), 64 shape test images, one image per group (`images_per_batch=1`, the classifier before grouping) vs
the automatic group size; it prints images per second of each and asserts identical predictions.

    OMP_NUM_THREADS=1 python benchmarks/classifier.py --miniworld --threads 1
"""
import argparse, contextlib, math, os, sys, time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from open_forgetting.classifier import (ClassifierConfig, classify, evaluations_per_image, paired_noise, preprocess_image,
                                        schedule_for, stage_timesteps)
from open_forgetting.data import load_prompts
from open_forgetting.models import Components, encode_images, encode_prompts, sd_scheduler, tiny_components


# ---------------- the reference loop (plain re-implementation of Li et al.'s protocol and batching) ----------------

def reference_eval_error(unet, alphas_cumprod, latent, all_noise, ts, noise_idxs, text_embeds, text_embed_idxs,
                         batch_size, loss, autocast):
    pred_errors = torch.zeros(len(ts))
    idx = 0
    with torch.inference_mode():
        for _ in range(len(ts) // batch_size + int(len(ts) % batch_size != 0)):
            batch_ts = torch.tensor(ts[idx: idx + batch_size])
            noise = all_noise[noise_idxs[idx: idx + batch_size]]
            a = alphas_cumprod[batch_ts].view(-1, 1, 1, 1).to(latent.device)
            noised_latent = latent * a ** 0.5 + noise * (1 - a) ** 0.5
            with autocast():
                noise_pred = unet(noised_latent, batch_ts.to(latent.device),
                                  encoder_hidden_states=text_embeds[text_embed_idxs[idx: idx + batch_size]]).sample
            fn = dict(l1=F.l1_loss, l2=F.mse_loss, huber=F.huber_loss)[loss]
            pred_errors[idx: idx + len(batch_ts)] = fn(noise, noise_pred.float(), reduction='none').mean(dim=(1, 2, 3)).cpu()
            idx += len(batch_ts)
    return pred_errors


def reference_classify(unet, alphas_cumprod, latent, text_embeds, all_noise, n_samples, to_keep, loss, batch_size, autocast):
    T, M = len(alphas_cumprod), max(n_samples)
    data, t_evaluated, remaining = {}, set(), list(range(len(text_embeds)))
    t_to_eval = list(range(T // M // 2, T, T // M))[:M]
    for n, keep in zip(n_samples, to_keep):
        ts, noise_idxs, text_idxs = [], [], []
        current = [t for t in t_to_eval[len(t_to_eval) // n // 2::len(t_to_eval) // n][:n] if t not in t_evaluated]
        for p in remaining:
            for t_idx, t in enumerate(current, start=len(t_evaluated)):
                ts.append(t); noise_idxs.append(t_idx); text_idxs.append(p)
        t_evaluated.update(current)
        errors = reference_eval_error(unet, alphas_cumprod, latent, all_noise, ts, noise_idxs, text_embeds, text_idxs,
                                      batch_size, loss, autocast)
        for p in remaining:
            mask = torch.tensor(text_idxs) == p
            data[p] = errors[mask] if p not in data else torch.cat([data[p], errors[mask]])
        scores = torch.tensor([-data[p].mean() for p in remaining])
        remaining = [remaining[i] for i in torch.topk(scores, k=keep).indices.tolist()]
    assert len(remaining) == 1
    return remaining[0]


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
    cfg = ClassifierConfig(to_keep=(2, 1), n_samples=(4, 12), batch_size=args.batch_size or 256)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cpu'); ap.add_argument('--sd15', action='store_true')
    ap.add_argument('--images', type=int, default=None, help='images to classify (default 2 on CPU, 4 on GPU)')
    ap.add_argument('--batch-size', type=int, default=None, help="open_forgetting's UNet batch budget (default 550 CPU, 256 GPU)")
    ap.add_argument('--ref-batch-size', type=int, default=32); ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--dtype', default=None, help='GPU compute dtype (default bf16)'); ap.add_argument('--compile', action='store_true')
    ap.add_argument('--peak-tflops', type=float, default=None, help='bf16 dense peak of the GPU (default: H100 SXM 989, A100 312)')
    ap.add_argument('--miniworld', action='store_true', help='images/s of one image per group vs grouped images on the miniworld model')
    ap.add_argument('--repeats', type=int, default=3, help='--miniworld: timed runs of each setting (median reported)')
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    if args.miniworld: return miniworld_groups(args)
    device = torch.device(args.device)
    gpu = device.type == 'cuda'
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}[args.dtype or ('bf16' if gpu else 'fp32')]
    prompts = load_prompts('cifar10')
    if args.sd15: comps = sd15_components(device, dtype if gpu else torch.float32)
    else: comps = tiny_components(seed=0, words=[w.strip(".") for p in prompts.prompt for w in p.split()])
    if not args.sd15 and device.type != "cpu": comps.to(device)
    n_images = args.images or (4 if gpu else 2)
    cfg = schedule_for('cifar10', batch_size=args.batch_size or (256 if gpu else 550), compile=args.compile,
                       dtype=None if not gpu else {torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.float32: 'fp32'}[dtype])
    ds = RandomImages(n_images, 10, comps.resolution)
    autocast = (lambda: torch.autocast('cuda', dtype=dtype)) if gpu and dtype != torch.float32 else contextlib.nullcontext
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    evals = evaluations_per_image(cfg, len(prompts))
    print(f'device={device} threads={torch.get_num_threads()} model={"SD-1.5-sized UNet (random)" if args.sd15 else "tiny"} '
          f'schedule=cifar10 {cfg.to_keep}/{cfg.n_samples} {cfg.loss}: {evals} UNet evals/image, {n_images} images, '
          f'ours batch {cfg.batch_size}, reference batch {args.ref_batch_size}', flush=True)

    # warm-up (first-call allocations, cuDNN autotune, compile)
    warm = ClassifierConfig(to_keep=(2, 1), n_samples=(2, 4), loss='l1', batch_size=cfg.batch_size, compile=args.compile, dtype=cfg.dtype)
    classify(comps, RandomImages(1, 10, comps.resolution), prompts, warm, cache=False, progress=False)
    with torch.inference_mode():
        z = torch.randn(1, 4, comps.unet.config.sample_size, comps.unet.config.sample_size, device=device)
        reference_classify(comps.unet, comps.scheduler.alphas_cumprod, z, encode_prompts(comps, prompts.prompt.tolist()).to(device),
                           torch.randn(4, *z.shape[1:], device=device), warm.n_samples, warm.to_keep, 'l1', args.ref_batch_size, autocast)

    # ours
    sync(); t0 = time.perf_counter()
    ours = classify(comps, ds, prompts, cfg, cache=False, progress=False)
    sync(); t_ours = time.perf_counter() - t0

    # reference loop: prompts encoded once, each image encoded, the same paired noise as `all_noise`
    sync(); t0 = time.perf_counter()
    text = encode_prompts(comps, prompts.prompt.tolist()).to(device)
    M = max(cfg.n_samples); ref_preds = []
    for i in range(len(ds)):
        img, _ = ds[i]
        z0 = encode_images(comps, preprocess_image(img, comps.resolution)[None].to(device)).float()
        noise = paired_noise(0, i, M, z0.shape[1:]).to(device)
        p = reference_classify(comps.unet, comps.scheduler.alphas_cumprod, z0, text, noise, cfg.n_samples, cfg.to_keep,
                               cfg.loss, args.ref_batch_size, autocast)
        ref_preds.append(int(prompts.classidx[p]))
    sync(); t_ref = time.perf_counter() - t0

    same = ours.pred.tolist() == ref_preds
    print(f'predictions identical: {same} (ours {ours.pred.tolist()}, reference {ref_preds})')
    rows = []
    for name, t in (('open_forgetting', t_ours), ('reference loop', t_ref)):
        rows.append(dict(implementation=name, s_per_image=t / n_images, unet_evals_per_s=evals * n_images / t))
    df = pd.DataFrame(rows).set_index('implementation')
    if gpu:
        flops = unet_flops_per_sample(comps.unet, (4, comps.unet.config.sample_size, comps.unet.config.sample_size),
                                      comps.unet.config.cross_attention_dim, device, dtype)
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or (989.0 if 'H100' in name else 312.0 if 'A100' in name else float('nan'))
        df['TFLOP/s'] = df.unet_evals_per_s * flops / 1e12
        df['fraction_of_bf16_peak'] = df['TFLOP/s'] / peak
        print(f'{name}: {flops / 1e9:.0f} GFLOP per UNet sample, bf16 dense peak {peak} TFLOP/s')
    print(df.to_string(float_format=lambda v: f'{v:.4g}'))
    print(f'speed-up (reference time / ours): {t_ref / t_ours:.2f}x')
    assert same, 'open_forgetting and the reference loop disagree on a prediction'


if __name__ == '__main__':
    main()
