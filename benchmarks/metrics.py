"""Time the Color Drift Index and texture drift on 1,000 synthetic 512x512 images (two sets of 500, as base vs
customized), on this machine's CPU. Prints the figures; no asserts (targets: < 60 s each, issue 5).

Run: .venv/bin/python benchmarks/metrics.py [--n 1000] [--size 512]"""
import argparse, os, platform, time

import torch
import torch.nn.functional as F

from open_forgetting.metrics import color_drift_index, texture_drift


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


if __name__ == '__main__':
    main()
