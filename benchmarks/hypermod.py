"""HyperMod figures: trainable-parameter counts at Stable Diffusion scale and the cost of modulation per UNet forward.

Run: .venv/bin/python benchmarks/hypermod.py [--sd] [--device cuda]
  --sd     also time a randomly initialised SD 1.x-size UNet (needs a GPU or a lot of patience on CPU)
Prints figures only; no assertions (speed never goes into tests).
"""
import argparse, statistics, time

import torch
from diffusers import UNet2DConditionModel

from open_forgetting.hypermod import HyperModConfig, SelfInitConfig, attach_hypermod, count_hypermod_parameters, self_initialize
from open_forgetting.models import tiny_components


def _timeit(fn, n=10, warmup=2, sync=lambda: None):
    for _ in range(warmup): fn()
    sync(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def parameter_counts():
    with torch.device('meta'):
        unets = {'SD 1.x': UNet2DConditionModel(cross_attention_dim=768),
                 'SD 2.x': UNet2DConditionModel(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)}
    configs = {'default (attn q/k/v/out + resnet conv1/conv2, hidden 32, rank 1)': HyperModConfig(),
               'hidden 16': HyperModConfig(hidden_dim=16),
               'attention projections only': HyperModConfig(target_modules=('to_q', 'to_k', 'to_v', 'to_out.0'))}
    for uname, unet in unets.items():
        total = sum(p.numel() for p in unet.parameters())
        for cname, cfg in configs.items():
            c = count_hypermod_parameters(unet, cfg)
            print(f"{uname:7s} {cname:65s} layers {c['modulated_layers']:4d}  trainable {c['total']:>12,d} "
                  f"({c['total'] / total:.2%} of {total:,d})")


def forward_costs(unet, inputs, label, sync):
    with torch.no_grad(): frozen = _timeit(lambda: unet(*inputs).sample, sync=sync)
    hm = attach_hypermod(unet)
    with torch.no_grad():
        cached = _timeit(lambda: unet(*inputs).sample, sync=sync)
        hm.config.cache_without_grad = False
        uncached = _timeit(lambda: unet(*inputs).sample, sync=sync)
        hm.config.cache_without_grad = True

    def train_step():
        out = unet(*inputs).sample
        out.float().pow(2).mean().backward()
    train = _timeit(train_step, n=5, sync=sync)
    hm.detach()
    print(f"{label}: frozen forward {frozen * 1e3:.1f} ms | modulated no-grad cached {cached * 1e3:.1f} ms, "
          f"uncached {uncached * 1e3:.1f} ms | modulated forward+backward {train * 1e3:.1f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--sd', action='store_true')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}")
    parameter_counts()

    c = tiny_components(seed=0).to(dev)
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(4, 4, 16, 16, generator=g).to(dev), torch.tensor([10, 300, 600, 900], device=dev),
              torch.randn(4, 77, 32, generator=g).to(dev))
    forward_costs(c.unet, inputs, 'tiny UNet, batch 4, 16x16 latents', sync)
    hm = attach_hypermod(c.unet)
    t0 = time.perf_counter()
    rep = self_initialize(hm, c, SelfInitConfig(steps=60, lr=1e-2, batch_size=2, latent_size=8, progress=False))
    dt = time.perf_counter() - t0
    s = rep.summary()
    print(f"tiny self-initialization, 60 steps: {dt:.1f} s; relative block L1 {s['relative_before']:.4f} -> {s['relative_after']:.4f}, "
          f"output {s['output_relative_before']:.4f} -> {s['output_relative_after']:.4f}")
    hm.detach()

    if args.sd:
        dtype = torch.float16 if dev.type == 'cuda' else torch.float32
        unet = UNet2DConditionModel(cross_attention_dim=768).to(dev, dtype).eval().requires_grad_(False)
        inputs = (torch.randn(2, 4, 64, 64, device=dev, dtype=dtype), torch.tensor([10, 900], device=dev),
                  torch.randn(2, 77, 768, device=dev, dtype=dtype))
        forward_costs(unet, inputs, f'SD 1.x-size UNet ({dtype}), batch 2, 64x64 latents', sync)


if __name__ == '__main__':
    main()
