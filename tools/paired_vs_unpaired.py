"""Paired vs unpaired noise, measured: how wide is the interval on a customized model's mean accuracy drop when the
base and the customized model are classified with the same (t, ε) per image (paired, the package's design) or with
independent noise per model, at equal compute; and how many images would the unpaired design need for the paired
width?

Both designs classify the same images, two models, one classifier noise seed per model, so their cost is equal.
Paired: base and customized model with noise seed s. Unpaired: base with seed s, customized with seed s' != s (the
noise of each model independent). The drop is mean_i(c_base(i) - c_model(i)) over images i (c = 1 if correct); its
95% interval is the percentile interval of a bootstrap over images (stratified by class, as `drift_report` does),
and its normal-theory width 2·1.96·sd_i(c_base - c_model)/sqrt(n). Widths scale as 1/sqrt(n), so the unpaired
design needs n·(w_unpaired / w_paired)^2 images for the paired width. The variance ratio gets its own bootstrap
interval (images resampled, both designs on the same resample). Every (model, seed) run is cached by `classify`,
so the designs share the 2·len(seeds) classification runs.

    OMP_NUM_THREADS=1 python tools/paired_vs_unpaired.py --n-per-class 8 --seeds 0 1 2        # small: a few minutes + training
    OMP_NUM_THREADS=1 python tools/paired_vs_unpaired.py --n-per-class 32 --seeds 0 1 2 3     # the demo's 256 shape images

The customized model comes from the study (`study.load_study_model`: trained once into the run folder, then reused).

Measured once (2026-11-30, `--n-per-class 16 --seeds 0 1 2`, bootstrap seed 0, 2,000 resamples; the miniworld study's
DreamBooth-plain on heart_emblem, shape test set, 128 images, classifier 2 1 / 4 12): mean drop 10.2 points in both
designs; mean 95% interval width 17.7 points paired vs 19.7 unpaired; variance ratio unpaired / paired 1.17 (bootstrap
1.06 to 1.29), width ratio 1.08: the unpaired design needs about 149 images (135 to 165) for the paired width with 128.
Widths are not timings, so the busy machine it ran on does not bias them.
"""
import argparse, itertools, os, time

import numpy as np
import pandas as pd
import torch


def drop_stats(cb: np.ndarray, cm: np.ndarray, labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    "Mean drop (points), its stratified-bootstrap 95% percentile interval and width, and the normal-theory width."
    d = (cb - cm) * 100.0
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    boot = np.stack([d[g[rng.integers(0, len(g), (n_boot, len(g)))]].sum(1) for g in groups]).sum(0) / len(d)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return dict(drop=d.mean(), lo=lo, hi=hi, width=hi - lo, normal_width=2 * 1.96 * d.std(ddof=1) / np.sqrt(len(d)),
                var=d.var(ddof=1))


def variance_ratio_ci(paired: list[np.ndarray], unpaired: list[np.ndarray], n_boot: int, rng) -> tuple[float, float, float]:
    "Var(unpaired differences) / Var(paired differences), pooled over seed pairs, with a bootstrap-over-images 95% interval."
    P, U = np.stack(paired), np.stack(unpaired)              # (designs' seed pairs, images)
    ratio = lambda idx: U[:, idx].var(axis=1, ddof=1).mean() / P[:, idx].var(axis=1, ddof=1).mean()
    n = P.shape[1]
    boots = np.array([ratio(rng.integers(0, n, n)) for _ in range(n_boot)])
    return ratio(np.arange(n)), *np.percentile(boots, [2.5, 97.5])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--study', default='miniworld'); ap.add_argument('--run-dir', default=None, help="default: the study's run folder")
    ap.add_argument('--concept', default='heart_emblem'); ap.add_argument('--method', default='dreambooth')
    ap.add_argument('--variant', default='plain'); ap.add_argument('--task', default='shape', help='miniworld classification task')
    ap.add_argument('--n-per-class', type=int, default=8); ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--n-boot', type=int, default=2000); ap.add_argument('--boot-seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=1); ap.add_argument('--out', default=None, help='CSV of the per-design rows')
    args = ap.parse_args()
    if len(args.seeds) < 2: raise SystemExit(f"--seeds needs at least 2 seeds (the unpaired design pairs different ones), got {args.seeds}.")
    torch.set_num_threads(args.threads)
    from open_forgetting.classifier import classify
    from open_forgetting.miniworld import miniworld_dataset, miniworld_prompts
    from open_forgetting.study import classifier_config, load_study, load_study_model

    t0 = time.perf_counter()
    study = load_study(args.study)
    run_dir = args.run_dir or study.run_dir()
    base = load_study_model(study, run_dir, args.concept, 'base', args.variant)
    model = load_study_model(study, run_dir, args.concept, args.method, args.variant)
    ds, prompts = miniworld_dataset(args.task, 'test', args.n_per_class), miniworld_prompts(args.task)
    config = classifier_config(study, f'miniworld:{args.task}')
    print(f'study={args.study} model={args.method}-{args.variant} concept={args.concept} task={args.task}: {len(ds)} images, '
          f'classifier {config.to_keep}/{config.n_samples} {config.loss}, noise seeds {args.seeds}, run folder {run_dir}', flush=True)
    runs = {(name, s): classify(m, ds, prompts, config, seed=s, model_name=name, progress=False).correct.to_numpy(float)
            for s in args.seeds for name, m in (('base', base), ('model', model))}
    labels = np.asarray(ds.labels)
    rng = np.random.default_rng(args.boot_seed)
    rows, P, U = [], [], []
    for s, s2 in itertools.permutations(args.seeds, 2):       # unpaired: base at s, model at s2 != s
        U.append((runs['base', s] - runs['model', s2]) * 100)
        rows.append(dict(design='unpaired', base_seed=s, model_seed=s2, **drop_stats(runs['base', s], runs['model', s2], labels, args.n_boot, rng)))
    for s in args.seeds:
        P.append((runs['base', s] - runs['model', s]) * 100)
        rows.append(dict(design='paired', base_seed=s, model_seed=s, **drop_stats(runs['base', s], runs['model', s], labels, args.n_boot, rng)))
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f'{v:.2f}'))
    summary = df.groupby('design')[['drop', 'width', 'normal_width', 'var']].mean()
    print('\nmean over seed pairs:'); print(summary.to_string(float_format=lambda v: f'{v:.2f}'))
    # equal compute: each design's estimate costs 2 models x n images; pair each unpaired run with a paired one of the same size
    P_eq = [P[i % len(P)] for i in range(len(U))]
    r, lo, hi = variance_ratio_ci(P_eq, U, args.n_boot, rng)
    n = len(ds)
    print(f'\nvariance ratio unpaired / paired: {r:.2f} (95% bootstrap over images {lo:.2f} to {hi:.2f}); '
          f'width ratio {np.sqrt(r):.2f}; the unpaired design needs about {n * r:.0f} images ({n * lo:.0f} to {n * hi:.0f}) '
          f'for the paired design\'s width with {n} images')
    print(f'({time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} thread(s), load average {os.getloadavg()})')
    if args.out: df.to_csv(args.out, index=False)


if __name__ == '__main__':
    main()
