#!/usr/bin/env python
"""Run and publish the ground-truth laboratory (issue 17 items 4-5): customized models of the miniworld's second base
spanning weak to strong drift, each measured by the `customize` and `global_drift` experiment notebooks.

    .venv/bin/python tools/run_lab.py                       # every configuration below, resumable
    .venv/bin/python tools/run_lab.py --only recipe --seeds 0,1
    .venv/bin/python tools/run_lab.py --only recipe --seeds 1 --variants plain   # one variant of a configuration
    .venv/bin/python tools/run_lab.py --only lora --drift-map   # also the drift map's functional drift (needs the weights)
    .venv/bin/python tools/run_lab.py --only lora --concepts crescent_emblem   # one concept (others already published)

Each configuration is the laboratory study (data/miniworld/lab/lab.yaml) with `--set` overrides, one run folder per
training seed under `--runs` (caches and weights stay there), and its finished cells' tidy tables published into
data/miniworld/lab/results/<configuration>/ (`results.publish_run`), which `validity.load_lab` reads. The runner skips
finished notebooks and publishing is idempotent, so an interrupted laboratory continues where it stopped.
"""
import argparse, os, subprocess, sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / 'data' / 'miniworld' / 'lab' / 'lab.yaml'
CONCEPTS = ['heart_emblem', 'arrow_emblem', 'crescent_emblem']
def _db_plain(**settings) -> dict:
    "Plain DreamBooth at training seed 0 and lr 1e-4 unless `settings` (training settings) say otherwise."
    return dict(methods=['dreambooth'], variants=['plain'], seeds=[0],
                set={f'training.settings.{k}': v for k, v in {'learning_rate': 1.0e-4, **settings}.items()})

def _lora(variants: list[str], **overrides) -> dict:
    "LoRA at training seed 0, lr 1e-3, rank 4, 500 steps, DC λ 175 unless `overrides` (study keys) say otherwise."
    return dict(methods=['lora'], variants=variants, seeds=[0], set={'training.settings.learning_rate': 1.0e-3, **overrides})

LORA_PIVOTAL = {'training.settings.lora_train_identifier': True, 'training.settings.text_encoder_lr_scale': 5.0}   # rows at lr 5e-3
LORA_WIDE = ['to_q', 'to_k', 'to_v', 'to_out.0', 'proj_in', 'proj_out', 'ff.net.0.proj', 'ff.net.2', 'conv1', 'conv2']

CONFIGS = {   # name -> methods, variants, training seeds, study overrides (and where to publish, when not the laboratory's results)
    'recipe': dict(methods=['dreambooth'], variants=['plain', 'dc'], seeds=[0], set={}),   # the first base's demo recipe, λ = 175
    'db-150-steps': dict(methods=['dreambooth'], variants=['plain'], seeds=[0], set={'training.settings.max_steps': 150}),
    'db-lr-1e-4': dict(methods=['dreambooth'], variants=['plain', 'dc'], seeds=[0, 1, 2], set={'training.settings.learning_rate': 1.0e-4}),
    'lr-1e-4-lambda-20': dict(methods=['dreambooth'], variants=['dc'], seeds=[0],
                              set={'training.settings.learning_rate': 1.0e-4, 'drift_correction.lambda_dc': 20.0}),
    'lr-1e-4-lambda-50': dict(methods=['dreambooth'], variants=['dc'], seeds=[0],
                              set={'training.settings.learning_rate': 1.0e-4, 'drift_correction.lambda_dc': 50.0}),
    'lr-1e-4-lambda-500': dict(methods=['dreambooth'], variants=['dc'], seeds=[0],
                               set={'training.settings.learning_rate': 1.0e-4, 'drift_correction.lambda_dc': 500.0}),
    # the alternatives to DC on DreamBooth's frontier (`validity.DB_FRONTIER`): fewer steps, a lower learning rate, a heavier prior
    **{f'db-lr-1e-4-{n}-steps': _db_plain(max_steps=n) for n in (300, 200, 100)},
    'db-lr-5e-5': _db_plain(learning_rate=5.0e-5),
    **{f'db-lr-1e-4-pr-{w:g}': _db_plain(lambda_pr=w) for w in (5.0, 25.0)},
    # the other methods at the learning rate that learns the concept on this base (1e-4), plain and with DC (λ = 175)
    'lora': dict(methods=['lora'], variants=['plain', 'dc'], seeds=[0], set={'training.settings.learning_rate': 1.0e-4}),
    'custom-diffusion': dict(methods=['custom_diffusion'], variants=['plain', 'dc'], seeds=[0],
                             set={'training.settings.learning_rate': 1.0e-4}),
    'hypermod': dict(methods=['hypermod'], variants=['plain', 'dc'], seeds=[0], set={'training.settings.learning_rate': 1.0e-4}),
    # LoRA's frontier (`validity.LORA_FRONTIER`). At lr 1e-4 (`lora`) LoRA hardly learns a concept on this base (ground-
    # truth fidelity 0.13), so there is no fidelity to trade: the frontier starts from lr 1e-3 (rank 4, 500 steps), DC at
    # λ 5-175, and the alternatives: fewer steps, a lower learning rate (3e-4, and `lora`'s 1e-4), a lower rank, a heavier
    # prior. Run `lora-lr-1e-3` and `lora-lr-3e-4` first: if lr 1e-3 does not learn the concept either, the rest is moot.
    'lora-lr-1e-3': _lora(['plain', 'dc']),
    **{f'lora-lr-1e-3-lambda-{l:g}': _lora(['dc'], **{'drift_correction.lambda_dc': l}) for l in (5.0, 20.0, 50.0)},
    **{f'lora-lr-1e-3-{n}-steps': _lora(['plain'], **{'training.settings.max_steps': n}) for n in (300, 100)},
    'lora-lr-3e-4': _lora(['plain'], **{'training.settings.learning_rate': 3.0e-4}),
    **{f'lora-lr-1e-3-rank-{r}': _lora(['plain'], **{'training.settings.lora_rank': r}) for r in (2, 1)},
    'lora-lr-1e-3-pr-5': _lora(['plain'], **{'training.settings.lambda_pr': 5.0}),
    # LoRA recipes with more capacity, looking for one that learns the concept (lr 1e-3 at rank 4 on the attention
    # projections gives ground-truth fidelity 0.25): rank 16; and adapters on every projection, feed-forward and ResNet
    # convolution too (the "LoCon" layout of community trainers), since this UNet has attention in only two of its blocks
    'lora-lr-1e-3-rank-16': _lora(['plain'], **{'training.settings.lora_rank': 16}),
    'lora-lr-1e-3-wide': _lora(['plain'], **{'training.settings.lora_targets': LORA_WIDE}),
    # ... and LoRA with its identifier's embedding rows trained too (pivotal tuning, `lora_train_identifier`), the rows at
    # lr 5e-3 as DreamBooth's in `db-lr-1e-4` (1e-4 x the laboratory's text_encoder_lr_scale of 50)
    'lora-lr-1e-4-identifier': _lora(['plain'], **{'training.settings.learning_rate': 1.0e-4, 'training.settings.lora_train_identifier': True}),
    'lora-lr-1e-3-identifier': _lora(['plain', 'dc'], **LORA_PIVOTAL),
    'lora-lr-1e-3-identifier-lambda-20': _lora(['dc'], **LORA_PIVOTAL, **{'drift_correction.lambda_dc': 20.0}),
    # the pivotal LoRA's frontier (`validity.LORA_FRONTIER`), from `lora-lr-1e-3-identifier`: DC at λ 5-500, and the
    # alternatives turned from the same start: fewer steps, a lower learning rate (adapters and rows together: the rows
    # stay at 5x the adapters'), a lower rank, a heavier prior
    **{f'lora-lr-1e-3-identifier-lambda-{l:g}': _lora(['dc'], **LORA_PIVOTAL, **{'drift_correction.lambda_dc': l}) for l in (5.0, 50.0, 500.0)},
    **{f'lora-lr-1e-3-identifier-{n}-steps': _lora(['plain'], **LORA_PIVOTAL, **{'training.settings.max_steps': n}) for n in (300, 100)},
    **{f'lora-lr-{lr:.0e}-identifier-rows-5x'.replace('e-0', 'e-'): _lora(['plain'], **LORA_PIVOTAL, **{'training.settings.learning_rate': lr})
       for lr in (3.0e-4, 1.0e-4)},
    **{f'lora-lr-1e-3-identifier-rank-{r}': _lora(['plain'], **LORA_PIVOTAL, **{'training.settings.lora_rank': r}) for r in (2, 1)},
    'lora-lr-1e-3-identifier-pr-5': _lora(['plain'], **LORA_PIVOTAL, **{'training.settings.lambda_pr': 5.0}),
    # Custom Diffusion and HyperMod at higher learning rates, looking for a recipe that learns the concept on this base (at
    # lr 1e-4, `custom-diffusion` and `hypermod`, their ground-truth fidelity was 0.31 and 0.13 in the grid then) for the grid's
    # `training.per_method` (as LoRA's search above gave it `lora-lr-1e-3-identifier`)
    **{f'{name}-lr-{lr:.0e}'.replace('e-0', 'e-'): dict(methods=[method], variants=['plain'], seeds=[0], set={'training.settings.learning_rate': lr})
       for name, method, lrs in (('custom-diffusion', 'custom_diffusion', (3.0e-3, 1.0e-3, 3.0e-4)), ('hypermod', 'hypermod', (1.0e-2, 3.0e-3, 1.0e-3, 3.0e-4)))
       for lr in lrs},
    # HyperMod with its identifier's embedding rows trained too (`method_settings.hypermod.train_identifier`, as LoRA's
    # pivotal tuning): its modulation does not read the prompt, so without the rows the identifier carries nothing of the
    # concept and no learning rate above learns it. Rows at 5e-3 in both (the study's 50x at 1e-4; 5x at 1e-3, as LoRA's).
    **{f'hypermod-lr-{lr:.0e}-identifier'.replace('e-0', 'e-'): dict(
        methods=['hypermod'], variants=['plain'], seeds=[0],
        set={'training.settings.learning_rate': lr, 'training.settings.text_encoder_lr_scale': scale,
             'training.per_method.hypermod.method_settings': {'hypermod': {'train_identifier': True}}})
       for lr, scale in ((1.0e-4, 50.0), (1.0e-3, 5.0))},
    # the teacher cache (issue 14 item 3): `db-lr-1e-4`'s DC models again, the teacher's predictions from a fixed pool of
    # 1,024 samples (500 steps x 2 DC samples = 1,000 draws live). Published apart (`publish_to`): near-copies of the live
    # DC models would weigh twice in the metric-validity set, which reads every configuration under `validity.lab_root()`.
    'db-lr-1e-4-teacher-pool': dict(methods=['dreambooth'], variants=['dc'], seeds=[0, 1, 2],
                                    set={'training.settings.learning_rate': 1.0e-4, 'training.settings.dc_teacher_pool': 1024},
                                    publish_to=REPO / 'data' / 'miniworld' / 'lab' / 'teacher_pool'),
}


DRIFT_MAP_PARAMS = dict(vocabulary='miniworld', n_samples=4, top_k=2)   # all 1,260 captions, 4 paired samples each


def run_config(name: str, cfg: dict, runs: Path, seeds: list[int] | None, drift_map: bool = False,
               concepts: list[str] | None = None, variants: list[str] | None = None) -> None:
    from open_forgetting.results import publish_run
    from open_forgetting.validity import lab_root
    results = cfg.get('publish_to') or lab_root()   # a configuration may be published apart from the validity set
    for seed in seeds or cfg['seeds']:
        run_dir = runs / name / f'seed-{seed}'
        sets = {**cfg['set'], 'training.settings.seed': seed}
        base = [sys.executable, '-m', 'open_forgetting.cli', 'run', '--study', str(STUDY), '--run-dir', str(run_dir),
                '--concepts', ','.join(concepts or CONCEPTS), '--methods', ','.join(cfg['methods']), '--variants', ','.join(variants or cfg['variants']),
                *[a for k, v in sets.items() for a in ('--set', f'{k}={v}')]]
        # the drift map (00_method §7) over every caption of the world is a run of its own: its parameters are its own
        passes = [('', ['--experiments', 'customize,global_drift'])]
        if drift_map: passes.append((' drift map', ['--experiments', 'drift_map', *[a for k, v in DRIFT_MAP_PARAMS.items() for a in ('--param', f'{k}={v}')]]))
        for what, extra in passes:
            print(f'# {name} seed {seed}{what}:', ' '.join([*base[2:], *extra]), flush=True)
            subprocess.run([*base, *extra], check=True)
        # with --drift-map only the drift map is published: the models' other tables were published by the run that trained
        # them (a faithful rerun of a model differs from them in wall seconds and float noise, and must not replace them)
        actions = publish_run(run_dir, seed=seed, dest=results / name, study=str(STUDY), **({'experiments': ['drift_map']} if drift_map else {}))
        print(actions.to_string(index=False), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--only', default=None, help=f'comma-separated configurations (default: all of {list(CONFIGS)})')
    p.add_argument('--seeds', default=None, help="comma-separated training seeds (default: each configuration's)")
    p.add_argument('--drift-map', action='store_true', help='also run the drift_map experiment (functional drift over the world) and '
                   'publish only it (the configuration run and published before, its weights still in --runs)')
    p.add_argument('--concepts', default=None, help=f'comma-separated concepts (default: all of {CONCEPTS})')
    p.add_argument('--variants', default=None, help="comma-separated variants (default: each configuration's)")
    p.add_argument('--runs', default=os.environ.get('OPEN_FORGETTING_LAB_RUNS', '/tmp/lab'), help='folder of the run folders')
    a = p.parse_args(argv)
    names = a.only.split(',') if a.only else list(CONFIGS)
    if bad := [n for n in names if n not in CONFIGS]: raise SystemExit(f'unknown configuration(s) {bad}; choose from {list(CONFIGS)}')
    seeds = [int(s) for s in a.seeds.split(',')] if a.seeds else None
    concepts = a.concepts.split(',') if a.concepts else None
    if bad := [c for c in concepts or [] if c not in CONCEPTS]: raise SystemExit(f'unknown concept(s) {bad}; choose from {CONCEPTS}')
    variants = a.variants.split(',') if a.variants else None
    if bad := [v for v in variants or [] if not all(v in CONFIGS[n]['variants'] for n in names)]:
        raise SystemExit(f"variant(s) {bad} are not run by every chosen configuration ({ {n: CONFIGS[n]['variants'] for n in names} })")
    for n in names: run_config(n, CONFIGS[n], Path(a.runs), seeds, a.drift_map, concepts, variants)


if __name__ == '__main__':
    main()
