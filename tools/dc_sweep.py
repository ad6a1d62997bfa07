"""Sweep customization settings in the miniature world and measure what issue 7 asks of each: forgetting, fidelity, binding.

Each configuration is a name and TrainConfig overrides on top of the study's recipe (`--study`, default `miniworld`), e.g.

    .venv/bin/python tools/dc_sweep.py --out data/miniworld/dc_sweep.csv \\
        'DB:plain:{}' 'DB-DC 10:dc:{"lambda_dc": 10}' 'DB-DC 100:dc:{"lambda_dc": 100}'

(`NAME:VARIANT:JSON`, optionally `NAME:METHOD:VARIANT:JSON`). `--train-seeds 0,1,2` runs every configuration once per
training seed (`NAME s<seed>`); `--dc-teacher-pool N` adds, for every configuration with Drift Correction, the same
one with the cached teacher of N samples (`NAME cached`). DC with and without the teacher cache over three seeds:

    .venv/bin/python tools/dc_sweep.py --out data/miniworld/dc_teacher_cache.csv --train-seeds 0,1,2 \\
        --dc-teacher-pool 1024 --seeds 0,1,2 'DB:plain:{}' 'DB-DC:dc:{}'

(the miniworld recipe draws 500 steps x 2 = 1000 DC samples per run, hence a pool of 1024; compare `drop` and
`fidelity_clip_i` of `DB-DC s<k>` and `DB-DC cached s<k>` against their spread over the seeds). For every configuration it trains (or reuses) the
customized model, then measures with the package's own code:
- the zero-shot classifier on the world's shape and colour sets (one stage, every prompt scored at `--n-t`
  timesteps, noise paired across models): accuracy, mean and worst-class drop with the paired 95% interval
  (`classifier.drift_report`), and the class-relative score drift (`classifier.score_drift`);
- fidelity: MiniClip CLIP-I between `--n-samples` generations of the instance prompt and the five instance images;
- binding: how many of 20 held-out views the model classifies as its instance prompt (`study.concept_identification`).
Rows are appended to `--out` (one per configuration and classification set); the base model's results are
cached by fingerprint, so it is classified once. Use it for the λ sweeps that 00_method §3 asks for.
"""
import argparse, json, time
from pathlib import Path

import pandas as pd
import torch

from open_forgetting.classifier import ClassifierConfig, drift_report, score_drift
from open_forgetting.core import atomic_write, home_dir
from open_forgetting.generate import GenerationSettings
from open_forgetting.miniworld import load_miniworld_clip, miniworld_dataset, miniworld_prompts
from open_forgetting.study import classify_over_seeds, concept_fidelity, load_base, load_study, study_concept, train_config
from open_forgetting.world import concept_identification
from open_forgetting.train import customize, load_customized


def parse_config(text: str) -> tuple[str, str, str, dict]:
    "'NAME:VARIANT:JSON' or 'NAME:METHOD:VARIANT:JSON' -> (name, method, variant, overrides)."
    head, brace, rest = text.partition(':{')
    parts = head.split(':')
    if not brace or len(parts) not in (2, 3):
        raise SystemExit(f"configuration {text!r}: expected NAME:VARIANT:JSON or NAME:METHOD:VARIANT:JSON.")
    name, method, variant = (parts[0], 'dreambooth', parts[1]) if len(parts) == 2 else parts
    return name, method, variant, json.loads('{' + rest)


def expand_configs(configs: list[tuple], train_seeds: str | None, pool: int) -> list[tuple[str, str, str, dict]]:
    "Each configuration once per training seed (`NAME s<seed>`), and with `pool` > 0 a cached-teacher twin of each DC one (`NAME cached`)."
    out = []
    for name, method, variant, overrides in configs:
        twins = [(name, overrides)]
        if pool and variant != 'plain': twins.append((f'{name} cached', {**overrides, 'dc_teacher_pool': pool}))
        for n, o in twins:
            if train_seeds is None: out.append((n, method, variant, o)); continue
            out += [(f'{n} s{s}', method, variant, {**o, 'seed': int(s)}) for s in train_seeds.split(',')]
    return out


def text_encoder_training(cfg) -> str:
    "What of the text encoder trains, in words (a column of the table)."
    if cfg.train_identifier_embedding: return f'identifier row, {cfg.text_encoder_lr_scale:g}x lr'
    return f'all, {cfg.text_encoder_lr_scale:g}x lr' if cfg.train_text_encoder else 'frozen'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('configs', nargs='+', help="NAME:VARIANT:JSON or NAME:METHOD:VARIANT:JSON (TrainConfig overrides)")
    p.add_argument('--concept', default='heart_emblem')
    p.add_argument('--study', '--preset', dest='study', default='miniworld', help='shipped study name or study file')
    p.add_argument('--n-per-class', type=int, default=16)
    p.add_argument('--n-t', type=int, default=10, help='timesteps per image of the one-stage classifier')
    p.add_argument('--seeds', default='0', help='comma-separated classifier noise seeds')
    p.add_argument('--n-samples', type=int, default=8, help='generations of the instance prompt for fidelity')
    p.add_argument('--run-dir', default=str(home_dir() / 'runs' / 'dc_sweep'))
    p.add_argument('--out', default='dc_sweep.csv')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--train-seeds', default=None, help='comma-separated training seeds: every configuration once per seed')
    p.add_argument('--dc-teacher-pool', type=int, default=0,
                   help='also run every DC configuration with the cached teacher of this many samples (0: no)')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    study, run_dir = load_study(a.study), Path(a.run_dir)
    base = load_base(study)
    concept = study_concept(study, a.concept, run_dir)
    clip = load_miniworld_clip()
    settings = study.generation_settings()
    config = ClassifierConfig(to_keep=(1,), n_samples=(a.n_t,))
    seeds = [int(s) for s in a.seeds.split(',')]
    for name, method, variant, overrides in expand_configs([parse_config(t) for t in a.configs], a.train_seeds, a.dc_teacher_pool):
        t0 = time.time()
        cfg = train_config(study, method, variant, **overrides)
        run = customize(base, concept, cfg, out_dir=run_dir / 'models' / f'{method}-{variant}-{cfg.key()}')
        model = load_customized(base, run)
        info = json.loads((run / 'run.json').read_text())
        fid = concept_fidelity({name: model}, concept.instance_dir, info['instance_prompt'], range(a.n_samples), settings, clip)[0]
        clip_i = float(fid.clip_i.iloc[0])
        ident = concept_identification(model, a.concept, info['instance_prompt'], config=config)
        hist = pd.read_csv(run / 'history.csv').tail(50).mean(numeric_only=True)
        rows = []
        for task in ('shape', 'colour'):
            data, prompts = miniworld_dataset(task, 'test', a.n_per_class), miniworld_prompts(task)
            runs = classify_over_seeds({'base': base, name: model}, data, prompts, config, seeds)
            rep = drift_report(runs, n_classes=len(data.classes)).loc[name]
            rows.append(dict(name=name, method=method, variant=variant, task=task, n_images=int(rep.n_images),
                             base_accuracy=rep.base_accuracy, accuracy=rep.accuracy, drop=rep['drop'], drop_lo=rep.drop_lo,
                             drop_hi=rep.drop_hi, worst_drop=rep.worst_drop, score_drift=score_drift(runs)[name],
                             fidelity_clip_i=clip_i, views_identified=ident['n_correct'], inst_loss=hist.get('inst'),
                             dc_loss=hist.get('dc'), lambda_dc=cfg.lambda_dc, learning_rate=cfg.learning_rate,
                             max_steps=cfg.max_steps, text_encoder=text_encoder_training(cfg),
                             dc_latents=cfg.dc_latents if cfg.uses_dc else None, dc_n_reg=cfg.dc_n_reg if cfg.uses_dc else None,
                             dc_prompts=cfg.dc_prompts if cfg.uses_dc else None, seed=cfg.seed,
                             dc_teacher_pool=cfg.dc_teacher_pool if cfg.uses_dc else None,
                             overrides=json.dumps(overrides), seconds=time.time() - t0))
        df = pd.DataFrame(rows)
        out = Path(a.out)   # appended by column name (older rows may lack newer columns), written atomically
        table = pd.concat([pd.read_csv(out), df], ignore_index=True) if out.exists() else df
        with atomic_write(out, 'w') as f: table.to_csv(f, index=False)
        print(df[['name', 'task', 'accuracy', 'drop', 'drop_lo', 'drop_hi', 'worst_drop', 'score_drift', 'fidelity_clip_i',
                  'views_identified']].round(3).to_string(index=False), flush=True)


if __name__ == '__main__':
    main()
