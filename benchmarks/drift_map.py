"""Cost of the drift map (issue 16, item 5) [ours]: prints the figures, asserts nothing.

1. Miniature world, measured: the whole caption vocabulary (1,260 captions of the world's grammar) for one pair of
   models, cold (the base model's side computed and cached) and warm (a second fine-tune of the same base: only the
   tuned side runs). Target: <= 60 s cold on the 2-core CPU. The tuned model is the base with a small weight
   perturbation (the cost does not depend on what the fine-tune did), or a finished run folder with --tuned.
2. Stable Diffusion 1.5 size, estimated: 1,000 concepts x 16 paired samples from a UNet throughput figure. Without
   --gpu the figure is an ASSUMPTION (about 90 UNet evaluations per second on one A100, the reference classifier's
   published throughput, open_forgetting/throughput.yaml), not a measurement; with --gpu it is measured on an
   SD-1.5-architecture UNet with random weights (bf16, batch 64). Target: <= 10 GPU-minutes.

    python benchmarks/drift_map.py                      # both parts (part 1 on the CPU)
    python benchmarks/drift_map.py --limit 40           # a quick look at 40 captions
    python benchmarks/drift_map.py --gpu                # part 2 measured on CUDA
"""
from __future__ import annotations
import argparse, copy, os, sys, tempfile, time
from pathlib import Path

import torch

ASSUMED_A100_EVALS_PER_S = 90.0


def perturbed_copy(base, scale: float = 0.002, seed: int = 0):
    "The base model with every UNet weight moved by `scale` of its tensor's std (a stand-in for a fine-tune)."
    tuned = copy.copy(base); tuned.unet = copy.deepcopy(base.unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.unet.parameters(): p.add_(scale * p.float().std().nan_to_num() * torch.randn(p.shape, generator=g).to(p))
    return tuned


def miniworld_pair(tuned_dir: str | None):
    from open_forgetting.miniworld import load_miniworld_base
    base = load_miniworld_base()
    if tuned_dir:
        from open_forgetting.train import load_customized
        return base, load_customized(base, tuned_dir)
    return base, perturbed_copy(base)


def part1(args) -> dict:
    "Time the caption vocabulary cold and warm in a fresh cache folder."
    os.environ['OPEN_FORGETTING_HOME'] = tempfile.mkdtemp(prefix='drift_map_bench_')
    from open_forgetting.drift_map import DriftMapConfig, drift_map, miniworld_captions
    from open_forgetting.generate import GenerationSettings
    from open_forgetting.miniworld import generic_prompts
    base, tuned = miniworld_pair(args.tuned)
    vocab = miniworld_captions()[:args.limit or None]
    cfg = DriftMapConfig(n_samples=args.n_samples, latents='pool', pool_prompts=tuple(generic_prompts(16)), batch_size=args.batch_size,
                         generation=GenerationSettings(scheduler='ddim', steps=25, guidance_scale=3.0))
    t0 = time.perf_counter(); tab = drift_map(base, tuned, vocab, config=cfg); cold = time.perf_counter() - t0
    tuned2 = perturbed_copy(base, seed=1)
    t0 = time.perf_counter(); drift_map(base, tuned2, vocab, config=cfg); warm = time.perf_counter() - t0
    n_evals = (len(vocab) + 1) * args.n_samples                      # each model: every caption and the empty prompt
    from open_forgetting.drift_map import miniworld_captions as all_captions
    n_all = len(all_captions())
    print(f'[miniworld] {len(vocab)} captions x {args.n_samples} samples, batch {args.batch_size}, {torch.get_num_threads()} thread(s):')
    print(f'  cold (base side computed, pool generated): {cold:.1f} s   ({2 * n_evals} UNet evaluations + the pool)   target <= 60 s')
    print(f'  warm (second fine-tune, base side cached): {warm:.1f} s   ({n_evals} UNet evaluations)')
    rate = n_evals / warm                                           # the warm run is (almost) UNet evaluations only
    print(f'  throughput {rate:.0f} UNet evaluations/s: at this rate all {n_all} captions fit about '
          f'{int(60 * rate / 2 / (n_all + 1))} samples per caption in 60 s cold')
    print(f'  most drifted: {tab.concept.head(3).tolist()}')
    return dict(cold_s=cold, warm_s=warm, n_concepts=len(vocab))


def measured_sd15_throughput(batch: int = 64, iters: int = 5) -> float:
    "UNet evaluations per second of an SD-1.5-architecture UNet (random weights, bf16, CUDA), no gradient."
    sys.path.insert(0, str(Path(__file__).parent))
    from train import sd15_components
    c = sd15_components('cuda', torch.bfloat16)
    x = torch.randn(batch, 4, 64, 64, device='cuda', dtype=torch.bfloat16)
    t = torch.randint(0, 1000, (batch,), device='cuda'); e = torch.randn(batch, 77, 768, device='cuda', dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(2): c.unet(x, t, encoder_hidden_states=e)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(iters): c.unet(x, t, encoder_hidden_states=e)
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def part2(args) -> dict:
    "Evaluations of 1,000 concepts x 16 samples at SD-1.5 size, and their time at the throughput figure."
    n_c, n = args.sd_concepts, args.sd_samples
    pool = 16 * 25 * 2                        # 16 pool images, 25 sampler steps with guidance (2 evaluations each)
    cold, warm = 2 * (n_c + 1) * n + pool, (n_c + 1) * n   # each model: every concept and the empty prompt
    own = n_c * n * 25 * 2                    # 'own' latents: one generation per concept and sample
    if args.gpu: rate, src = measured_sd15_throughput(), 'MEASURED on this GPU (SD-1.5 architecture, random weights, bf16, batch 64)'
    else: rate, src = ASSUMED_A100_EVALS_PER_S, 'ASSUMED: ~90 UNet evaluations/s on one A100 (published figure, not measured here)'
    print(f'[sd15] {n_c} concepts x {n} samples at 512 px; throughput {rate:.0f} evals/s, {src}:')
    print(f'  cold: {cold} UNet evaluations = {cold / rate / 60:.1f} GPU-min   (target <= 10)')
    print(f'  warm (base side cached): {warm} = {warm / rate / 60:.1f} GPU-min')
    print(f"  with z0 = 'own' (a generation per concept and sample): +{own} = +{own / rate / 3600:.1f} GPU-h: why 'pool' is the default")
    return dict(cold_min=cold / rate / 60, warm_min=warm / rate / 60, evals_per_s=rate)


def main(argv=None):
    p = argparse.ArgumentParser(description='Cost of the drift map.')
    p.add_argument('--n-samples', type=int, default=16)
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--limit', type=int, default=0, help='only the first N captions (0: all 1,260)')
    p.add_argument('--tuned', default='', help='a finished customization run folder of the miniworld base')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--gpu', action='store_true', help='measure part 2 on CUDA')
    p.add_argument('--skip-miniworld', action='store_true')
    p.add_argument('--sd-concepts', type=int, default=1000)
    p.add_argument('--sd-samples', type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.skip_miniworld: part1(args)
    part2(args)


if __name__ == '__main__':
    main()
