"""Full-size rehearsal of the Stable Diffusion path on this machine: the real architectures with random weights.

For each architecture (SD-1.5; SD-2.1 with v-prediction and the OpenCLIP-H text encoder: width 1024, 23 layers)
this script
1. builds UNet, VAE and text encoder from the published configs with random weights, and the real CLIP tokenizer
   (49,408 tokens, from open_clip's shipped BPE), and saves them as a local folder in the diffusers layout;
2. writes datasets in their real torchvision on-disk formats with fake images (STL-10's binary files, Oxford-IIIT
   Pets' images + annotation lists), a DreamBench-layout concept folder (5 JPEGs), the real encoder architectures
   with random weights (open_clip ViT-L-14 as .safetensors, DINO ViT-S/16 as a transformers folder), and a study
   file pointing at all of it;
3. runs the real path through the runner (`open-forgetting run`): every method (DreamBooth, Custom Diffusion, LoRA,
   HyperMod), plain and with Drift Correction, customize + global drift (classification, generation, CLIP-I, CDI,
   KID, texture), local drift / colour / diversity for one cell, and the report; micro counts throughout;
4. prints, per stage, the wall time and the peak resident memory of the processes that ran it (on a GPU machine also
   the peak GPU memory in use, read through NVML), and the notebook cells
   that took the most time (`runner.cell_times`: training, classification, generation, each metric).

    python benchmarks/rehearse_full_size.py --arch sd15 --out /tmp/rehearsal      # ~40 min target on 2 cores
    python benchmarks/rehearse_full_size.py --arch sd15 --methods lora --variants dc --experiments global_drift --train-resolution 256   # a slice

On one H200 (2026-12-04, `gpu_check.sh`, SD-1.5 at 512 px, DreamBooth plain and DC, fp32 as the study says, 16 CPU
threads): build + save 25.8 s; customize 77.2 s and 80.2 s, global drift 82.1 s (with the base's classification)
and 57.1 s; report 20.9 s; host peak RSS 12.3 GB. At these micro counts most of it is fixed cost: per notebook,
imports and loading the 4 GB model (the slowest cells: global_drift's first, 34 s; customize's imports, 15 s).

On this 2-core CPU (2026-12-05, the library of 2e869b6, 2 threads, load 0.22 at the start, nothing else running): SD-1.5, all
eight method x variant runs, the extra experiments and the report in 3,323 s, 0 stages not done, peak RSS 18.7 GB
(DreamBooth); 39% of the cell time is classification (152 s per model at 256 px), 31% training (120 s per run).
SD-2.1 (2026-12-05, the library of e85af9e, 2 threads, load 0.32 at the start, nothing else running; train at 768 px,
classify and generate at 256 px): all eight runs, the extra experiments and the report in 4,987 s, 0 stages not done,
peak RSS 19.6 GB (DreamBooth plain, 768 px); 53% of the cell time is training (316 s per run), 27% classification
(160 s per model). Neither architecture meets the 40-minute target on 2 cores; both stay under 20 GB.

Numbers measured under load are no result: check the load average it prints."""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

import numpy as np

ARCHS = {
    # published configs: runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1 (model_index + subfolders)
    'sd15': dict(unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           hidden_act='quick_gelu', projection_dim=768),
                 prediction_type='epsilon', resolution=512),
    'sd21': dict(unet=dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                           use_linear_projection=True, upcast_attention=True),
                 text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                           hidden_act='gelu', projection_dim=512),
                 prediction_type='v_prediction', resolution=768),
}


def build_full_size(arch: str, folder: Path) -> Path:
    "The architecture's components with random weights, saved as a diffusers folder (skipped when it exists)."
    if (folder / 'model_index.json').exists(): return folder
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from open_forgetting.models import Components, build_clip_tokenizer, save_components, sd_scheduler
    a = ARCHS[arch]; torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                                down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
                                up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3, **a['unet'])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
                        down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
                        sample_size=a['resolution'], scaling_factor=0.18215)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                                        pad_token_id=49407 if arch == 'sd15' else 0, **a['text']))
    save_components(Components(unet, vae, text, build_clip_tokenizer(), sd_scheduler(a['prediction_type']), source=arch), folder)
    return folder


def write_encoders(root: Path) -> tuple[str, str]:
    "open_clip ViT-L-14 (random, .safetensors) and DINO ViT-S/16 (random, transformers folder): the real architectures."
    import open_clip, torch
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTModel
    clip_file, dino_dir = root / 'open_clip_vit_l14_random.safetensors', root / 'dino_vits16_random'
    if not clip_file.exists():
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in open_clip.create_model('ViT-L-14', pretrained=None).state_dict().items()}, clip_file)
    if not dino_dir.exists():
        ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16,
                           image_size=224), add_pooling_layer=False).save_pretrained(dino_dir, safe_serialization=True)
    # the random file stands in for OpenAI's ViT-L-14 weights: 'openai@file' builds the network they were trained in (QuickGELU)
    return f'open_clip:ViT-L-14:openai@{clip_file}', str(dino_dir)


def write_datasets(root: Path, size: int = 96) -> None:
    "STL-10 (binary files) and Oxford-IIIT Pets (JPEGs + annotations/test.txt) in their real layouts, fake images."
    from PIL import Image
    from open_forgetting.data import load_prompts
    rng = np.random.default_rng(0)
    stl = root / 'stl10' / 'stl10_binary'
    if not stl.exists():
        stl.mkdir(parents=True)
        names = list(dict.fromkeys(load_prompts('stl10').sort_values('classidx').classname))
        labels = np.arange(1, len(names) + 1, dtype=np.uint8)
        rng.integers(0, 256, (len(labels), 3, size, size), dtype=np.uint8).tofile(stl / 'test_X.bin')
        labels.tofile(stl / 'test_y.bin'); (stl / 'class_names.txt').write_text('\n'.join(names) + '\n')
        for f in ('train_X.bin', 'train_y.bin', 'unlabeled_X.bin'): (stl / f).write_bytes(b'')
    pets = root / 'pets' / 'oxford-iiit-pet'
    if not pets.exists():
        (pets / 'images').mkdir(parents=True); (pets / 'annotations').mkdir()
        breeds = list(dict.fromkeys(load_prompts('pets').sort_values('classidx').classname))
        lines = []
        for i, breed in enumerate(breeds):
            stem = f"{breed.replace(' ', '_')}_1"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(pets / 'images' / f'{stem}.jpg')
            lines.append(f'{stem} {i + 1} 1 1')
        for split in ('test', 'trainval'): (pets / 'annotations' / f'{split}.txt').write_text('\n'.join(lines) + '\n')


def write_concept(root: Path, name: str = 'dog', n: int = 5) -> Path:
    from PIL import Image
    folder = root / 'dreambench' / name
    if not folder.exists():
        folder.mkdir(parents=True)
        for i in range(n): Image.fromarray(np.random.default_rng(i).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(folder / f'{i:02d}.jpg')
    return folder.parent


def write_study(args, root: Path, base: Path, encoder: str, dino: str) -> Path:
    "The study file of the rehearsal: the shipped `sd15`/`sd21` study with micro counts and this machine's folders."
    import yaml
    from open_forgetting.study import load_study, save_study
    res = ARCHS[args.arch]['resolution']
    train = dict(max_steps=args.steps, num_class_images=1, class_sampling_steps=2, resolution=args.train_resolution or res,
                 checkpoint_every=0, progress=False, dc_teacher_pool=4)   # memory settings: the package's defaults (printed per run)
    study = load_study(args.arch, {
        'name': f'rehearsal-{args.arch}', 'model.base': str(base), 'model.dtype': args.dtype,   # None: the study's default
        'classification.root': str(root / 'datasets'), 'classification.verify_checksums': False, 'classification.seeds': [0],
        # STL-10 only: one image per class is 100 UNet samples per model at one timestep; Pets' 37 classes would be
        # 1,369 (its files are written and read by the world's test, not classified here)
        'classification.datasets': {'stl10': {'n_per_class': 1, 'classifier': {'to_keep': [1], 'n_samples': [1], 'resolution': args.classifier_resolution}}},
        'concepts.root': str(root / 'concepts' / 'dreambench'), 'concepts.names': ['dog'],
        'training.methods': args.methods.split(','), 'training.variants': args.variants.split(','), 'training.settings': train,
        # HyperMod's data-free self-initialization is 500 steps of batch 4 at the native resolution by default (hours on a
        # CPU at full size): micro counts for it too
        'training.per_method': {'hypermod': {'method_settings': {'self_init': {'steps': args.steps, 'batch_size': 1, 'eval_batch_size': 1,
                                                                                'prompt_limit': 2}}}},
        'seeds': {'paired': [0], 'control': [100], 'diversity': [0, 1]},
        'appearance': {'encoder': encoder, 'dino': dino, 'kid_features': 'encoder', 'n_generic_prompts': 2,
                       'generation': {'scheduler': 'ddim', 'steps': 2, 'guidance_scale': 7.5, 'height': args.generation_resolution,
                                      'width': args.generation_resolution}},
    })
    return save_study(study, root / f'rehearsal-{args.arch}.yaml')


_MEASURE = r'''
import json, sys, threading, time, psutil
from open_forgetting.cli import main
try:            # GPU memory in use on the machine's GPUs (NVML: every process, so run nothing else beside it)
    import pynvml; pynvml.nvmlInit(); gpus = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
except Exception: gpus = []
peak, gpu_peak, me, done = [0], [0], psutil.Process(), threading.Event()
def sample():   # the whole process tree: this process and every kernel it starts (sampled every 0.2 s)
    while not done.is_set():
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try: total += p.memory_info().rss
            except psutil.Error: pass
        peak[0] = max(peak[0], total)
        if gpus: gpu_peak[0] = max(gpu_peak[0], sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in gpus))
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
t0 = time.time(); rc = main(sys.argv[1:]); done.set()
out = dict(rc=rc, seconds=time.time() - t0, peak_rss_gb=peak[0] / 2**30)
if gpus: out['peak_gpu_gb'] = gpu_peak[0] / 2**30
print('REHEARSAL ' + json.dumps(out))
'''

def measured(argv: list[str], env: dict) -> dict:
    "Run `open-forgetting ARGV` in a fresh process; its wall time and the peak summed RSS of its process tree (it and its kernels)."
    r = subprocess.run([sys.executable, '-c', _MEASURE, *argv], capture_output=True, text=True, env=env)
    line = next((l for l in r.stdout.splitlines() if l.startswith('REHEARSAL ')), None)
    if line is None: raise RuntimeError(f"open-forgetting {' '.join(argv)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return json.loads(line[len('REHEARSAL '):])


def rehearse(args) -> list[dict]:
    import pandas as pd
    root = Path(args.out).expanduser() / args.arch; root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, 'OPEN_FORGETTING_HOME': str(root / 'home'), 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
    rows = []
    def stage(name, fn):
        t0 = time.time(); fn(); rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        rows.append(dict(stage=name, seconds=round(time.time() - t0, 1), peak_rss_gb=round(rss, 2), status='done')); print(rows[-1], flush=True)
    stage(f'build {args.arch} (random weights) + save', lambda: build_full_size(args.arch, root / 'base'))
    encoders = {}
    stage('encoders (ViT-L-14, DINO ViT-S/16) + datasets + concept', lambda: (encoders.update(zip(('clip', 'dino'), write_encoders(root))),
                                                                          write_datasets(root / 'datasets'), write_concept(root / 'concepts')))
    study = write_study(args, root, root / 'base', encoders['clip'], encoders['dino'])
    run_dir = root / 'run'
    for method in args.methods.split(','):
        for variant in args.variants.split(','):
            out = measured(['run', '--study', str(study), '--methods', method, '--variants', variant, '--experiments', args.experiments,
                            '--run-dir', str(run_dir)], env)
            jobs = pd.read_csv(run_dir / 'jobs.csv')
            for r in jobs[(jobs.method == method) & (jobs.variant == variant)].itertuples():
                rows.append(dict(stage=f'{r.experiment} {method}-{variant}', seconds=round(r.seconds, 1), peak_rss_gb=round(out['peak_rss_gb'], 2),
                                 **({'peak_gpu_gb': round(out['peak_gpu_gb'], 2)} if 'peak_gpu_gb' in out else {}),
                                 status=r.status, error=getattr(r, 'error', '')))
                print(rows[-1], flush=True)
    if args.extra_experiments:
        m, v = args.methods.split(',')[0], args.variants.split(',')[-1]
        out = measured(['run', '--study', str(study), '--methods', m, '--variants', v, '--experiments', args.extra_experiments,
                        '--run-dir', str(run_dir)], env)
        jobs = pd.read_csv(run_dir / 'jobs.csv')
        for r in jobs[jobs.experiment.isin(args.extra_experiments.split(','))].itertuples():
            rows.append(dict(stage=f'{r.experiment} {m}-{v}', seconds=round(r.seconds, 1), peak_rss_gb=round(out['peak_rss_gb'], 2), status=r.status))
            print(rows[-1], flush=True)
    def report():
        import papermill as pm
        from open_forgetting.runner import experiments_dir
        pm.execute_notebook(str(experiments_dir() / 'report.ipynb'), str(run_dir / 'report.ipynb'), parameters={'run_dir': str(run_dir)},
                            cwd=str(run_dir), progress_bar=False)
    stage('report', report)
    from open_forgetting.runner import cell_times, format_cell_times
    print('\nwhere the time went inside the notebooks:\n' + format_cell_times(cell_times(run_dir), 15), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arch', choices=sorted(ARCHS), default='sd15')
    p.add_argument('--out', default='/tmp/open_forgetting_rehearsal')
    p.add_argument('--methods', default='dreambooth,custom_diffusion,lora,hypermod')
    p.add_argument('--variants', default='plain,dc')
    p.add_argument('--experiments', default='customize,global_drift')
    p.add_argument('--extra-experiments', default='local_drift,color,diversity', help='run for the first method and last variant only')
    p.add_argument('--steps', type=int, default=1, help='training steps per run (micro)')
    p.add_argument('--train-resolution', type=int, default=None, help='default: the architecture native resolution')
    p.add_argument('--classifier-resolution', type=int, default=256)
    p.add_argument('--generation-resolution', type=int, default=256)
    p.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default=None,
                   help="the base model's dtype (default: the study's, fp32 on a CPU and bf16 on a GPU, what a user gets)")
    args = p.parse_args(argv)
    import torch
    print(f"rehearsal {args.arch}: torch threads {torch.get_num_threads()}, load average {os.getloadavg()}, "
          f"train at {args.train_resolution or ARCHS[args.arch]['resolution']} px, classify at {args.classifier_resolution} px, "
          f"generate at {args.generation_resolution} px", flush=True)
    t0 = time.time(); rows = rehearse(args)
    import pandas as pd
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    not_done = ~table.status.isin(['done', 'skipped (done)'])     # a resumed rehearsal skips the stages an earlier one finished
    print(f"rehearsal {args.arch}: {time.time() - t0:.0f} s in total, peak RSS {table.peak_rss_gb.max():.1f} GB, "
          f"{not_done.sum()} stages not done; load average at the end {os.getloadavg()}")
    return int(not_done.any())


if __name__ == '__main__': sys.exit(main())
