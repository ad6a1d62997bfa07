"""Time the Color Drift Index and texture drift on 1,000 synthetic 512x512 images (two sets of 500, as base vs
customized), on this machine's CPU. Prints the figures; no asserts (targets: < 60 s each, issue 5).
Also times KID with its interval (`kid_interval`, 200 subset resamplings) on `--kid-n` features per set, and
`Components.fingerprint` first (hashes every weight) vs again (memoized on the unchanged weights, issue 13) on a
model with `--fp-channels` UNet channels (320 640 1280 1280 is SD-1.5's width).

Run: .venv/bin/python benchmarks/metrics.py [--n 1000] [--size 512] [--kid-n 1000] [--fp-channels 320 640 1280 1280]
Tiny check: .venv/bin/python benchmarks/metrics.py --n 20 --size 64 --kid-n 50 --fp-channels 32 64"""
import argparse, os, platform, time

import torch
import torch.nn.functional as F

from open_forgetting.metrics import color_drift_index, kid_interval, texture_drift
from open_forgetting.models import tiny_components


def synthetic_images(n: int, size: int, seed: int, tint=(1.0, 1.0, 1.0)) -> torch.Tensor:
    "uint8 (n, 3, size, size): smooth random colour fields plus pixel noise (uint8 keeps 1,000 images at 0.8 GB)."
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    tint = torch.tensor(tint)[None, :, None, None]
    for i in range(0, n, 50):
        b = min(50, n - i)
        low = torch.rand(b, 3, 8, 8, generator=g)
        x = F.interpolate(low, size=(size, size), mode='bilinear', align_corners=False)
        x = (x * tint + 0.08 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 1)
        out[i:i + b] = (x * 255).round().to(torch.uint8)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=1000, help='total images (split in two sets)')
    ap.add_argument('--size', type=int, default=512)
    ap.add_argument('--kid-n', type=int, default=1000, help='features per set for KID with its interval')
    ap.add_argument('--fp-channels', type=int, nargs='+', default=[320, 640, 1280, 1280], help='UNet widths of the fingerprinted model')
    args = ap.parse_args()
    half = args.n // 2
    t = time.perf_counter()
    a = synthetic_images(half, args.size, 0)
    b = synthetic_images(args.n - half, args.size, 1, tint=(1.0, 0.85, 0.7))
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, '
          f'load average {os.getloadavg()[0]:.1f}', flush=True)
    print(f'{args.n} synthetic images of {args.size}x{args.size} ({a.numel() + b.numel():,} bytes uint8) built in {time.perf_counter() - t:.1f} s', flush=True)
    for name, fn in [('CDI (rg, EMD)', lambda: color_drift_index(a, b)),
                     ('CDI (Lab a*b*, EMD)', lambda: color_drift_index(a, b, space='ab')),
                     ('texture drift (GLCM + uniform LBP)', lambda: texture_drift(a, b))]:
        load = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time(); v = fn(); dt, dc = time.perf_counter() - t, time.process_time() - c
        v = v['texture_drift'] if isinstance(v, dict) else v
        # wall time depends on what else runs on the machine; CPU time (all threads of this process) does not
        print(f'{name:36s}: wall {dt:6.1f} s, CPU {dc:6.1f} s for {args.n} images ({1000 * dt / args.n:.1f} ms/image wall), '
              f'value {v:.4f}, load avg {load:.1f}, target < 60 s wall: {"met" if dt < 60 else "NOT met"}', flush=True)

    g = torch.Generator().manual_seed(0)
    fa, fb = torch.randn(args.kid_n, 768, generator=g), torch.randn(args.kid_n, 768, generator=g) + 0.05
    t = time.perf_counter(); r = kid_interval(fa, fb); dt = time.perf_counter() - t
    print(f'{"KID with 95% interval (200 subsets)":36s}: wall {dt:6.1f} s for {args.kid_n} + {args.kid_n} features of 768: '
          f'{r["kid"]:.5f} [{r["kid_lo"]:.5f}, {r["kid_hi"]:.5f}]', flush=True)
    comps = tiny_components(channels=tuple(args.fp_channels), text_dim=768, norm_num_groups=32 if min(args.fp_channels) >= 32 else 8)
    n = sum(p.numel() for m in (comps.unet, comps.vae, comps.text_encoder) for p in m.parameters())
    t = time.perf_counter(); f1 = comps.fingerprint(); first = time.perf_counter() - t
    t = time.perf_counter(); f2 = comps.fingerprint(); again = time.perf_counter() - t
    assert f1 == f2
    print(f'{"Components.fingerprint":36s}: {n:,} parameters: first {first:.2f} s, again (unchanged weights) {again:.3f} s', flush=True)


if __name__ == '__main__':
    main()
