"""UNet evaluations per second on this machine, for `open-forgetting plan`'s throughput table.

One "evaluation" is one latent through the UNet (forward, no guidance), at the batch size the classifier would use.
Runs >= 3 timed repeats per UNet after a warm-up and prints median, min and max, the thread count and the load
average; `--write` records the medians in open_forgetting/throughput.yaml (device 'cpu' or 'cuda').

    OMP_NUM_THREADS=2 python benchmarks/throughput.py --unets miniworld sd --write"""
from __future__ import annotations
import argparse, os, statistics, sys, time
from pathlib import Path

import torch
import yaml


def sd_unet(dtype):
    "SD-1.5's UNet from its published config, random weights (the speed does not depend on the values)."
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                                down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
                                up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3).to(dtype)


def unet_and_inputs(name: str, device, dtype, batch: int):
    if name.startswith('miniworld'):   # a shipped miniworld base: 'miniworld', 'miniworld-2'
        from open_forgetting.miniworld import load_miniworld_base
        unet = load_miniworld_base(name=name).unet
        res, ctx = 32, (unet.config.cross_attention_dim, 16)
    else:
        unet, res, ctx = sd_unet(dtype), 512, (768, 77)
    unet = unet.to(device, dtype).eval()
    lat = res // (2 if name.startswith('miniworld') else 8)
    x = torch.randn(batch, unet.config.in_channels, lat, lat, device=device, dtype=dtype)
    emb = torch.randn(batch, ctx[1], ctx[0], device=device, dtype=dtype)
    return unet, x, emb, res


def evals_per_second(unet, x, emb, repeats: int, calls: int) -> list[float]:
    t = torch.full((x.shape[0],), 500, device=x.device)
    rates = []
    with torch.inference_mode():
        unet(x, t, encoder_hidden_states=emb)                     # warm-up
        for _ in range(repeats):
            if x.is_cuda: torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls): unet(x, t, encoder_hidden_states=emb)
            if x.is_cuda: torch.cuda.synchronize()
            rates.append(calls * x.shape[0] / (time.perf_counter() - t0))
    return rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--unets', nargs='+', default=['miniworld', 'sd'], choices=['miniworld', 'miniworld-2', 'sd'])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--write', action='store_true', help='record the medians in open_forgetting/throughput.yaml')
    a = p.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    print(f"throughput: {device}, {dtype}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    rows = []
    for name in a.unets:
        batch, calls = (256, 4) if name.startswith('miniworld') else ((32, 2) if device.type == 'cuda' else (4, 1))
        unet, x, emb, res = unet_and_inputs(name, device, dtype, batch)
        r = evals_per_second(unet, x, emb, a.repeats, calls)
        med = statistics.median(r)
        print(f"  {name:9} {res} px, batch {batch}: median {med:.2f} evaluations/s (min {min(r):.2f}, max {max(r):.2f}, {len(r)} runs)")
        rows.append(dict(unet=name, device=device.type, resolution=res, evals_per_s=round(med, 2),
                         source=f"measured {time.strftime('%Y-%m-%d')} by benchmarks/throughput.py ({torch.get_num_threads()} threads, "
                                f"{str(dtype).replace('torch.', '')}, batch {batch}, load average {os.getloadavg()[0]:.2f})"))
        del unet
    print(f"throughput: load average at the end {os.getloadavg()}")
    if a.write:
        path = Path(__file__).resolve().parents[1] / 'open_forgetting' / 'throughput.yaml'
        text = path.read_text(); header = ''.join(l for l in text.splitlines(keepends=True) if l.startswith('#'))
        table = [r for r in yaml.safe_load(text)['throughput'] if (r['unet'], r['device']) not in {(x['unet'], x['device']) for x in rows}]
        body = yaml.safe_dump({'throughput': rows + table}, sort_keys=False, width=200)
        path.write_text(header + body)
        print(f"throughput: wrote {path}")


if __name__ == '__main__': sys.exit(main())
