"""Validation of the drift map in the miniature world (issue 16, item 4) [ours].

For the study's models of one concept (default: DreamBooth and DreamBooth + Drift Correction of `heart_emblem`,
'miniworld' study; trained and cached by `study.load_study_model` when missing), this compares, over the
classification classes of the world (8 shapes + 6 colours, the classifier's own prompts):

- each class's zero-shot accuracy drop (base minus tuned, the paper's per-class drop, `classify_over_seeds` at the
  study's classifier seeds), and
- the functional drift of the class prompt, D(c), D(c)/S(c) and the conditional drift D_cond(c)/S(c) (`drift_map`),
  for each z0 source and timestep range.

It prints and writes the Spearman rank correlation of D with the drop, per model and pooled over the models, with a
bootstrap CI over classes (and a permutation p-value). The correlations do not depend on machine load; timings do.

    python tools/drift_map_validation.py                                  # defaults below
    python tools/drift_map_validation.py --configs pool:0-1000 --n-samples 64 --sample-seeds 0,1 --overrides '{}'
"""
from __future__ import annotations
import argparse, time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--study', default='miniworld', help='a shipped study name or a study file')
    p.add_argument('--run-dir', default='', help="study run folder (default: $OPEN_FORGETTING_HOME/runs/drift-map-validation)")
    p.add_argument('--concept', default='heart_emblem')
    p.add_argument('--models', default='dreambooth:plain,dreambooth:dc', help='method:variant list')
    p.add_argument('--configs', default='pool:0-1000,pool:0-500,pool:500-1000,own:0-1000,noise',
                   help="z0 source:timestep range list ('noise' is z_T = ε at t = T-1)")
    p.add_argument('--overrides', default='{"classification.seeds": [0]}',
                   help="study overrides as JSON (default: one classifier noise seed, to fit a loaded CPU; '{}' keeps the study)")
    p.add_argument('--n-samples', type=int, default=16)
    p.add_argument('--sample-seeds', default='0', help='drift-map sample seeds (each one a separate estimate)')
    p.add_argument('--n-boot', type=int, default=2000)
    p.add_argument('--out', default='', help='output folder (default: <run-dir>/drift_map_validation)')
    return p.parse_args(argv)


def class_drops(S, base, model, label: str) -> pd.DataFrame:
    "Per-class accuracy of base and model on the study's classification sets, and the drop (points)."
    from open_forgetting.study import classification_sets, classifier_config, classify_over_seeds
    rows = []
    for name, (dataset, prompts) in classification_sets(S).items():
        runs = classify_over_seeds({'base': base, label: model}, dataset, prompts, classifier_config(S, name), S.classification.seeds)
        order = prompts.sort_values('classidx')
        acc = {m: df.groupby('label').correct.mean() * 100 for m, df in runs.items()}
        for idx, cls, prompt in zip(order.classidx, order.classname, order.prompt):
            rows.append(dict(model=label, dataset=name, concept=cls, prompt=prompt, base_accuracy=acc['base'][idx],
                             accuracy=acc[label][idx], drop=acc['base'][idx] - acc[label][idx]))
    return pd.DataFrame(rows)


def class_drifts(S, base, model, label: str, latents: str, t_range: tuple[int, int | None], n: int, seed: int) -> pd.DataFrame:
    "The drift map over the classification prompts (one row per class)."
    from open_forgetting.drift_map import drift_map, DriftMapConfig
    from open_forgetting.miniworld import generic_prompts
    cfg = DriftMapConfig(n_samples=n, latents=latents, t_min=t_range[0], t_max=t_range[1], seed=seed,
                         pool_prompts=tuple(generic_prompts(16)), generation=S.generation_settings(), batch_size=64)
    tabs = [drift_map(base, model, f'miniworld:{task}', config=cfg) for task in ('shape', 'colour')]
    return pd.concat(tabs)[['concept', 'drift', 'signal', 'relative', 'cond_relative']].assign(
        model=label, latents=latents, t_range=f'{t_range[0]}-{t_range[1] or 1000}', sample_seed=seed)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True); b = b - b.mean(-1, keepdims=True)
    with np.errstate(invalid='ignore', divide='ignore'):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def spearman_ci(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float, float, float]:
    "Spearman ρ, its percentile bootstrap 95% CI over rows, and a two-sided permutation p-value (vectorized)."
    from scipy.stats import rankdata, spearmanr
    rho = spearmanr(x, y).statistic
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (n_boot, len(x)))
    boots = _rowwise_pearson(rankdata(x[idx], axis=1), rankdata(y[idx], axis=1))   # ties re-ranked per resample
    rx, ry = rankdata(x), rankdata(y)
    perm = _rowwise_pearson(np.broadcast_to(rx, (n_boot, len(x))), ry[np.argsort(rng.random((n_boot, len(y))), 1)])
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return float(rho), float(lo), float(hi), float((np.abs(perm) >= abs(rho) - 1e-12).mean())


def correlations(table: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    "ρ(D, drop), ρ(D/S, drop) and ρ(D_cond/S, drop) per model and pooled, for each z0 source, timestep range and sample seed."
    rows = []
    for key, g in table.groupby(['latents', 't_range', 'sample_seed']):
        for model, h in [*g.groupby('model'), ('pooled', g)]:
            for measure in ('drift', 'relative', 'cond_relative'):
                rho, lo, hi, p = spearman_ci(h[measure].values, h['drop'].values, n_boot)
                rows.append(dict(zip(['latents', 't_range', 'sample_seed'], key), model=model, measure=measure,
                                 n_classes=len(h), rho=rho, rho_lo=lo, rho_hi=hi, p_perm=p))
    return pd.DataFrame(rows)


def study_model(S, run_dir: Path, concept: str, method: str, variant: str):
    "The cell's model (trained when missing); a finished run that an older open_forgetting wrote is loaded as it is."
    from open_forgetting.study import load_study_model, load_base, RunLayout
    from open_forgetting.train import load_customized
    try: return load_study_model(S, run_dir, concept, method, variant)
    except FileExistsError as e:
        print(f'note: {e.args[0][:160]}...: loading the finished run as it is', flush=True)
        return load_customized(load_base(S), RunLayout(run_dir).model(concept, method, variant))


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    torch.set_num_threads(1)
    import json
    from open_forgetting.core import home_dir
    from open_forgetting.study import load_study, load_base
    from open_forgetting.plots import model_label
    S = load_study(args.study, json.loads(args.overrides) or None)
    run_dir = Path(args.run_dir) if args.run_dir else home_dir() / 'runs' / 'drift-map-validation'
    out = Path(args.out) if args.out else run_dir / 'drift_map_validation'; out.mkdir(parents=True, exist_ok=True)
    base = load_base(S)
    configs = [(c.split(':')[0], tuple(int(v) for v in c.split(':')[1].split('-')) if ':' in c else (999, None))
               for c in args.configs.split(',')]
    seeds = [int(s) for s in args.sample_seeds.split(',')]
    drops, drifts = [], []
    for spec in args.models.split(','):
        method, variant = spec.split(':'); label = model_label(method, variant)
        model = study_model(S, run_dir, args.concept, method, variant)
        for latents, r in configs:                 # the drift maps first: minutes; the classifier: the rest
            for s in seeds:
                t0 = time.time(); drifts.append(class_drifts(S, base, model, label, latents, r, args.n_samples, s))
                print(f'{label}: drift map {latents} t={r} seed {s} in {time.time() - t0:.0f} s', flush=True)
        pd.concat(drifts).to_csv(out / 'drifts_partial.csv', index=False)
        t0 = time.time(); drops.append(class_drops(S, base, model, label)); print(f'{label}: classified in {time.time() - t0:.0f} s', flush=True)
        pd.concat(drops).to_csv(out / 'drops_partial.csv', index=False)
    table = pd.concat(drifts).merge(pd.concat(drops), on=['model', 'concept'])
    corr = correlations(table, args.n_boot).assign(concept=args.concept, n_samples=args.n_samples, study=args.study,
                                                   overrides=args.overrides)
    table.to_csv(out / 'per_class.csv', index=False); corr.to_csv(out / 'correlations.csv', index=False)
    pd.set_option('display.width', 200)
    print(pd.concat(drops).round(1).to_string(index=False))
    print(corr.round(3).to_string(index=False))
    print(f'written: {out}/per_class.csv, {out}/correlations.csv')
    return corr


if __name__ == '__main__':
    main()
