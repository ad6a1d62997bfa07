"""Step time and peak memory of X vs X-DC with a live teacher vs X-DC with the cached teacher (and X-DC\\pr) for every method.

Drift Correction costs, per regularization sample, one student forward + backward (~3 forward units) and one
teacher forward (1 unit), so for b main-batch samples (instance + class images) and r regularization samples the
ideal X-DC / X step-time ratio is 1 + 4r / (3b); with the teacher cache (`dc_teacher_pool`, the variant `dc_cached`
here) the teacher's forward is gone and the ideal is 1 + r / b; for X-DC\\pr (no class images, b' = b/2 samples) the ideal ratio
to X is (3b' + 4r) / (3b). The measured ratio must lie within 10% of the ideal (no wasted work: prompts encoded once,
teacher without gradient and in the training dtype). The default r = 1 with the methods' usual batch (one instance
and one class image) gives 1 + 4/6 = 1.67 <= 2.

    python benchmarks/train.py                 # CPU, tiny model (what `make bench` runs)
    python benchmarks/train.py --gpu           # CUDA, an SD-1.5-sized UNet/VAE/text encoder built from their configs (random weights)
    python benchmarks/train.py --methods lora --steps 20 --sample-size 32
    python benchmarks/train.py --methods dreambooth lora --variants plain dc dc_cached --runs 5   # the teacher-cache comparison

Timing: the variants of a method take turns (round-robin, the order rotated every run) for `--runs` runs of `--steps`
steps each; a run's figure is its mean step time, and the table gives the median, min and max over runs, with the
ratio of medians to the plain variant. The thread count and the machine's load average (before and after) are
printed: a figure taken under load is no measurement.

Peak memory: growth of `torch.cuda.max_memory_allocated` (CUDA) or of the process's peak resident set size (CPU,
Linux VmHWM, reset before each build) while a variant is set up and runs its warm-up steps: its copy of the model,
optimizer state and transient activations. Step times are medians; on CPU the variants of a method step in turn
(round-robin) so that load from other processes affects them alike.
"""
from __future__ import annotations
import argparse, ctypes, gc, os, re, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from open_forgetting.models import Components, tiny_components, build_clip_tokenizer, sd_scheduler
from open_forgetting.train import Trainer, load_concept, variant_config

TOLERANCE = 0.10


# ---------------------------------------------------------------- models
def sd15_components(device: str = 'cuda', dtype=torch.bfloat16) -> Components:
    "Random-weight components with Stable Diffusion 1.5's architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder)."
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    tok = build_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'),
        up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
                        layers_per_block=2, sample_size=512, scaling_factor=0.18215)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, hidden_act='quick_gelu',
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    c = Components(unet, vae, te, tok, sd_scheduler(), source='sd15-architecture(random)')
    c.unet.to(device, dtype); c.text_encoder.to(device, dtype); c.vae.to(device, torch.float32)
    return c.eval()


# ---------------------------------------------------------------- memory helpers
def _rss_kib(field: str) -> int:
    return int(re.search(rf'{field}:\s+(\d+)', Path('/proc/self/status').read_text()).group(1))

def _reset_peak(device: str):
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(); return torch.cuda.memory_allocated()
    try: ctypes.CDLL('libc.so.6').malloc_trim(0)               # hand freed heap back so the next peak is this run's
    except OSError: pass
    Path('/proc/self/clear_refs').write_text('5')             # reset VmHWM (Linux)
    return _rss_kib('VmRSS') * 1024

def _peak(device: str, start: int) -> float:
    if device == 'cuda': return (torch.cuda.max_memory_allocated() - start) / 2**20
    return (_rss_kib('VmHWM') * 1024 - start) / 2**20


# ---------------------------------------------------------------- one run
def build(base, concept, method, variant, args, prompt_file, workdir):
    "A Trainer of (method, variant) after warm-up steps, with its peak memory (setup + warm-up) and the waste checks."
    kw = dict(max_steps=10**6, num_class_images=4, class_sampling_steps=2, dc_n_reg=args.n_reg, progress=False,
              dc_prompt_file=prompt_file, mixed_precision=args.mixed_precision,
              gradient_checkpointing=args.gradient_checkpointing, device=args.device)
    if args.batch is not None: kw['train_batch_size'] = args.batch
    if variant == 'dc_cached': kw['dc_teacher_pool'] = args.pool
    cfg = variant_config(method, 'dc' if variant == 'dc_cached' else variant, **kw)
    start = _reset_peak(args.device)
    tr = Trainer(base, concept, cfg, workdir / f'{method}-{variant}', base_fingerprint=args.fingerprint)
    encodes = []
    encoders = {id(base.text_encoder): base.text_encoder, id(tr.student.text_encoder): tr.student.text_encoder}
    hooks = [m.register_forward_hook(lambda *a: encodes.append(1)) for m in encoders.values()]
    for _ in range(args.warmup): tr.train_step()
    for h in hooks: h.remove()
    row = dict(method=method, variant=variant, peak_mib=_peak(args.device, start),
               b=cfg.train_batch_size * (2 if cfg.uses_prior else 1), r=cfg.dc_n_reg if cfg.uses_dc else 0,
               text_encodes_per_step=len(encodes) / max(1, args.warmup), cached=cfg.uses_dc and cfg.dc_teacher_pool > 0)
    if tr.teacher is not None:
        row.update(teacher_dtype=str(next(tr.teacher.parameters()).dtype).replace('torch.', ''),
                   teacher_grad=any(p.requires_grad for p in tr.teacher.parameters()))
    return tr, row

def time_steps(trainers: dict, args) -> dict[str, list[float]]:
    "Mean step time (s) of each trainer in each of `args.runs` runs of `args.steps` steps; the trainers take turns, the order rotated every run."
    sync = torch.cuda.synchronize if args.device == 'cuda' else (lambda: None)
    times, keys = {k: [] for k in trainers}, list(trainers)
    for run in range(args.runs):
        for k in keys[run % len(keys):] + keys[:run % len(keys)]:
            sync(); t0 = time.perf_counter()
            for _ in range(args.steps): trainers[k].train_step()
            sync(); times[k].append((time.perf_counter() - t0) / args.steps)
    return times

def measure_method(base, concept, method, args, prompt_file, workdir) -> dict[str, dict]:
    "Rows of every variant of `method`: built one after the other (memory), timed interleaved (CPU) or one by one (--sequential)."
    rows, trainers = {}, {}
    for v in args.variants:
        tr, rows[v] = build(base, concept, method, v, args, prompt_file, workdir)
        if args.sequential:
            rows[v]['runs_s'] = time_steps({v: tr}, args)[v]; del tr; gc.collect()
        else: trainers[v] = tr
    if trainers:
        for v, t in time_steps(trainers, args).items(): rows[v]['runs_s'] = t
    for row in rows.values(): row['step_s'] = statistics.median(row['runs_s'])
    return rows


def ideal_ratio(row, plain):
    "Cost model in forward units: 3 per student sample (fwd + bwd), 1 per teacher sample (0 with the teacher cache)."
    return (3 * row['b'] + (3 if row.get('cached') else 4) * row['r']) / (3 * plain['b'])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--gpu', action='store_true', help='CUDA with an SD-1.5-sized model (bf16 mixed precision)')
    ap.add_argument('--methods', nargs='+', default=['dreambooth', 'custom_diffusion', 'lora'])
    ap.add_argument('--variants', nargs='+', default=['plain', 'dc', 'dc_cached', 'dc_pr'],
                    help="'plain', 'dc' (live teacher), 'dc_cached' (X-DC with the teacher cache), 'dc_pr'")
    ap.add_argument('--steps', type=int, default=10, help='timed steps per run (a run reports their mean)')
    ap.add_argument('--runs', type=int, default=3, help='timed runs per variant, taking turns (median, min and max reported)')
    ap.add_argument('--pool', type=int, default=256, help="teacher pool size of the 'dc_cached' variant")
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--batch', type=int, default=None, help="instance images per step (default: the method's usual batch; class images add as many)")
    ap.add_argument('--n-reg', type=int, default=1, help='r, DC regularization samples per step')
    ap.add_argument('--sample-size', type=int, default=32,
                    help='CPU tiny model latent size (images twice as large); at 16 fixed per-call overheads, not FLOPs, dominate')
    ap.add_argument('--threads', type=int, default=1, help='CPU threads (1 is the most stable on a shared machine)')
    ap.add_argument('--gradient-checkpointing', action='store_true')
    ap.add_argument('--sequential', action='store_true', help='time each variant alone (default on GPU: three SD-sized trainers may not fit)')
    args = ap.parse_args(argv)
    args.device = 'cuda' if args.gpu else 'cpu'
    args.mixed_precision = 'bf16' if args.gpu else 'no'
    args.sequential = args.sequential or args.gpu
    if args.gpu and not torch.cuda.is_available(): sys.exit('--gpu needs CUDA.')
    if args.runs < 3: print(f'warning: --runs {args.runs} < 3: min/median/max of fewer than three runs say little')
    if not args.gpu: torch.set_num_threads(args.threads)

    base = sd15_components() if args.gpu else tiny_components(sample_size=args.sample_size)
    args.fingerprint = base.fingerprint()
    workdir = Path(tempfile.mkdtemp(prefix='bench_train_'))
    folder = workdir / 'bench_subject'; folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4): Image.fromarray(rng.integers(0, 255, (base.resolution, base.resolution, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    concept = load_concept(folder, class_noun='toy')
    prompt_file = workdir / 'generic.txt'
    from open_forgetting.losses import load_generic_prompts
    prompt_file.write_text('\n'.join(load_generic_prompts()) + '\n')

    print(f"device={args.device} model={base.source} resolution={base.resolution} mixed_precision={args.mixed_precision} "
          f"threads={torch.get_num_threads()} batch={args.batch or 'method default'} r={args.n_reg} runs={args.runs} x "
          f"steps={args.steps} pool={args.pool} load_average_before={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # warm-up run: class images are generated once here (cached), so no measured run pays for them
    build(base, concept, args.methods[0], 'plain', args, str(prompt_file), workdir / 'warmup')
    header = (f"{'method':<17}{'variant':<10}{'b':>3}{'r':>3}{'median ms':>10}{'min':>8}{'max':>8}{'peak MiB':>10}{'ratio':>8}"
              f"{'ideal':>8}{'dev':>8}  checks")
    print(header); print('-' * len(header))
    failures = []
    for method in args.methods:
        rows = measure_method(base, concept, method, args, str(prompt_file), workdir)
        plain = rows.get('plain')
        for v, row in rows.items():
            ratio = ideal = dev = None
            if plain is not None:
                ratio, ideal = row['step_s'] / plain['step_s'], ideal_ratio(row, plain)
                dev = ratio / ideal - 1
                if v in ('dc', 'dc_cached') and abs(dev) > TOLERANCE: failures.append(f'{method}/{v}: {ratio:.2f} vs ideal {ideal:.2f}')
            checks = {k: row[k] for k in ('text_encodes_per_step', 'teacher_dtype', 'teacher_grad') if k in row}
            fmt = lambda x, f: format(x, f) if x is not None else '-'
            print(f"{method:<17}{v:<10}{row['b']:>3}{row['r']:>3}{row['step_s'] * 1e3:>10.1f}{min(row['runs_s']) * 1e3:>8.1f}"
                  f"{max(row['runs_s']) * 1e3:>8.1f}{row['peak_mib']:>10.1f}"
                  f"{fmt(ratio, '.2f'):>8}{fmt(ideal, '.2f'):>8}{fmt(dev, '+.0%'):>8}  {checks}")
    print(f"\nload_average_after={' '.join(f'{x:.2f}' for x in os.getloadavg())} threads={torch.get_num_threads()}")
    print(f"ratio = median step time / median step time of the plain variant; ideal = (3b + 4r) / (3 b_plain) with a live "
          f"teacher, (3b + 3r) / (3 b_plain) with the teacher cache; tolerance ±{TOLERANCE:.0%} for X-DC vs X (same main batch). X-DC\\pr rows are informational: its main batch is half as large, so costs that do "
          "not scale with b (Custom Diffusion re-encodes its instance prompt every step, per-call overheads) push it above the ideal.")
    print('text_encodes_per_step counts text-encoder forwards per training step (0 when the text encoder is frozen;'
          ' Custom Diffusion re-encodes its one instance prompt, whose <new1> row trains).')
    if failures: print('OUTSIDE TOLERANCE: ' + '; '.join(failures))
    else: print('X-DC within tolerance of the ideal ratio for every method')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
