"""Issue 18's aggregation (nbs/19_results.ipynb): publishing finished grid cells into the repository and rebuilding the
tables from the published files alone. Synthetic run folders (`results.synthetic_run`: the per-image rows go through
`study.drift_tables` like the global_drift notebook's) keep it to seconds; the one real smoke run is `slow`."""
import hashlib, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from open_forgetting.core import DamagedFileError, repo_root
from open_forgetting.results import (MANIFEST, cell_drift, dc_effects, dc_verdict, grid_status, load_results, paired_effect,
                                     publish_cell, publish_run, published, published_cell, synthetic_run, table1, table2)

CONCEPTS, METHODS = ['heart_emblem', 'arrow_emblem'], ['dreambooth', 'lora']


def _tree(root: Path) -> dict:
    "Every file under `root` -> (sha256, mtime_ns)."
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
    "Two training seeds (one run folder each) of 2 concepts x 2 methods x {plain, dc}, published into one tree."
    tmp = tmp_path_factory.mktemp('results')
    runs = {s: synthetic_run(tmp / f'run-seed{s}', CONCEPTS, METHODS, ('plain', 'dc'), seed=s) for s in (0, 1)}
    dest = tmp / 'published'
    for s, run in runs.items(): publish_run(run, seed=s, dest=dest)
    return runs, dest


@pytest.fixture(scope='module')
def cells(grid):
    "Per-cell drift of the published grid (computed once: it is the slow step)."
    return cell_drift(load_results(grid[1])['global_drift/classification'])


def _by_hand(dest: Path):
    "Per cell and dataset (accuracy, drop, worst-class drop) with numpy, from the published classification files read directly."
    rows = []
    for f in sorted(dest.glob('seed-*/*/*/global_drift/classification.csv')):
        seed, concept, cell = int(f.parts[-5].split('-')[1]), f.parts[-4], f.parts[-3]
        df = pd.read_csv(f)
        for dataset, d in df.groupby('dataset'):
            b, m = d[d.model == 'base'].sort_values('image_id'), d[d.model != 'base'].sort_values('image_id')
            cb, cm, lab = b.correct.to_numpy(float), m.correct.to_numpy(float), b.label.to_numpy()
            assert (m.image_id.to_numpy() == b.image_id.to_numpy()).all()
            per_class = [100 * (cb[lab == k].mean() - cm[lab == k].mean()) for k in np.unique(lab)]
            rows.append(dict(seed=seed, concept=concept, cell=cell, dataset=dataset, accuracy=100 * cm.mean(),
                             drop=100 * (cb.mean() - cm.mean()), worst_drop=max(per_class)))
    return pd.DataFrame(rows)


def test_table1_rebuilt_from_per_image_rows(grid):
    _, dest = grid
    t1 = table1(load_results(dest))
    hand = _by_hand(dest)
    assert len(hand) == 2 * 2 * 2 * 2 * 2                      # seeds x concepts x methods x variants x datasets
    for dataset, method, variant in [('miniworld:shape', 'dreambooth', 'plain'), ('miniworld:colour', 'lora', 'dc'),
                                     ('miniworld:shape', 'lora', 'plain')]:
        h = hand[(hand.dataset == dataset) & (hand.cell == f'{method}-{variant}')]
        row = t1[(t1.dataset == dataset) & (t1.method == method) & (t1.variant == variant)].iloc[0]
        assert row.n == len(h) == 4
        assert row.accuracy == pytest.approx(h.accuracy.mean())
        assert row['drop'] == pytest.approx(h['drop'].mean())
        assert row.worst_drop == pytest.approx(h.worst_drop.mean())
        ci = stats.ttest_1samp(h['drop'], 0).confidence_interval(0.95)   # another route to the t interval over cells
        assert (row.drop_lo, row.drop_hi) == pytest.approx((ci.low, ci.high))
    assert t1.model.iloc[0] == 'base'


def test_cell_numbers_match_the_experiment_notebooks_summary(grid, cells):
    "The per-cell rebuild from per-image rows agrees with each cell's own semantic_drift.csv (written when the cell ran)."
    cells = cells.set_index(['training_seed', 'concept', 'method', 'variant', 'dataset'])
    sd = load_results(grid[1])['global_drift/semantic_drift']
    sd = sd[sd.model != 'base'].set_index(['training_seed', 'concept', 'cell_method', 'cell_variant', 'dataset'])
    assert len(sd) == len(cells) == 32
    for col in ('accuracy', 'base_accuracy', 'drop', 'worst_drop'):
        np.testing.assert_allclose(cells[col].sort_index().to_numpy(), sd[col].sort_index().to_numpy())


def test_publishing_twice_is_idempotent(grid):
    runs, dest = grid
    before = _tree(dest)
    acts = publish_run(runs[0], seed=0, dest=dest)
    assert set(acts.action) == {'unchanged'} and len(acts) == 2 * 2 * 2 * 7
    assert _tree(dest) == before                                # not a byte and not a time stamp changed
    files = {p.relative_to(dest).parts[-2:] for p in dest.rglob('*') if p.is_file()}
    assert not any(name.endswith(('.png', '.safetensors', '.ipynb', '.json')) and name != MANIFEST for _, name in files)
    assert ('global_drift', 'manifest.csv') not in files        # the cache index stays behind


def test_a_differing_file_is_refused(grid, tmp_path):
    runs, dest = grid
    dest2 = tmp_path / 'pub'; shutil.copytree(dest, dest2)
    other = synthetic_run(tmp_path / 'other', ['heart_emblem'], ['dreambooth'], ('dc',), seed=0, harm={'dc': 0.6})
    before = _tree(dest2)
    with pytest.raises(FileExistsError, match='classification.csv differs'):
        publish_cell(other, 'heart_emblem', 'dreambooth', 'dc', seed=0, dest=dest2)
    assert _tree(dest2) == before                               # refused before anything was written
    acts = publish_cell(other, 'heart_emblem', 'dreambooth', 'dc', seed=0, dest=dest2, overwrite=True)
    assert 'replaced' in set(acts.action)
    cell = published_cell(dest2, 'heart_emblem', 'dreambooth', 'dc', 0)
    assert (cell / 'global_drift/classification.csv').read_bytes() == (other / 'heart_emblem/dreambooth-dc/global_drift/classification.csv').read_bytes()
    # a run folder missing a table that is published: refused, then removed with overwrite
    (other / 'heart_emblem/dreambooth-dc/customize/ground_truth_fidelity.csv').unlink()
    with pytest.raises(FileExistsError, match='not in the run'):
        publish_cell(other, 'heart_emblem', 'dreambooth', 'dc', seed=0, dest=dest2)
    acts = publish_cell(other, 'heart_emblem', 'dreambooth', 'dc', seed=0, dest=dest2, overwrite=True)
    assert 'removed' in set(acts.action) and not (cell / 'customize/ground_truth_fidelity.csv').exists()
    load_results(dest2)                                         # the manifest agrees with the files again


def test_wrong_seed_and_damaged_files_are_errors(grid, tmp_path):
    runs, dest = grid
    with pytest.raises(ValueError, match='publish it with seed=1'):
        publish_run(runs[1], seed=0, dest=tmp_path / 'x')
    dest2 = tmp_path / 'pub'; shutil.copytree(dest, dest2)
    f = dest2 / 'seed-1/arrow_emblem/lora-dc/diversity/diversity.csv'
    f.write_text(f.read_text().replace('2.', '3.', 1))
    with pytest.raises(DamagedFileError, match='differs from what'):
        load_results(dest2)
    f.unlink()
    with pytest.raises(DamagedFileError, match='missing'):
        load_results(dest2)


def test_paired_difference_is_the_mean_of_cell_differences(grid, cells):
    _, dest = grid
    eff = paired_effect(cells, 'drop', 'dc', 'plain').set_index(['dataset', 'method'])
    hand = _by_hand(dest)
    for (dataset, method), e in eff.iterrows():
        h = hand[hand.dataset == dataset]
        dc = h[h.cell == f'{method}-dc'].set_index(['concept', 'seed'])['drop'].sort_index()
        plain = h[h.cell == f'{method}-plain'].set_index(['concept', 'seed'])['drop'].sort_index()
        assert list(dc.index) == list(plain.index) and len(dc) == 4
        assert e.effect == pytest.approx((dc - plain).mean())
        ci = stats.ttest_rel(dc.to_numpy(), plain.to_numpy()).confidence_interval(0.95)   # the paired t interval, by scipy
        assert (e.effect_lo, e.effect_hi) == pytest.approx((ci.low, ci.high))
        assert e.n == 4
    v = dc_verdict(eff.reset_index())
    assert ((v.verdict == 'reduces forgetting') == (v.effect_hi < 0)).all()


def test_ground_truth_effect_from_the_published_files(grid, cells):
    "DC's paired effect on ground-truth drift, against the cells' ground_truth_drift.csv files read directly."
    _, dest = grid
    eff = dc_effects(load_results(dest), metrics=('gt_drift',), variants=('dc',), cells=cells).set_index('method')
    for method in METHODS:
        side = {v: pd.Series({(f.parts[-4], f.parts[-5]): pd.read_csv(f).drift.item()
                              for f in dest.glob(f'seed-*/*/{method}-{v}/global_drift/ground_truth_drift.csv')}) for v in ('dc', 'plain')}
        assert eff.loc[method, 'effect'] == pytest.approx((side['dc'] - side['plain']).mean()) and eff.loc[method, 'n'] == 4


def test_unmatched_cells_are_left_out_of_the_pairs(cells):
    part = cells[~((cells.concept == 'arrow_emblem') & (cells.training_seed == 1) & (cells.variant == 'plain'))]
    eff = paired_effect(part, 'drop')
    assert set(eff.n) == {3}
    d = part[(part.dataset == 'miniworld:shape') & (part.method == 'lora')].pivot_table(index=['concept', 'training_seed'], columns='variant', values='drop')
    got = eff[(eff.dataset == 'miniworld:shape') & (eff.method == 'lora')].effect.item()
    assert got == pytest.approx((d['dc'] - d['plain']).dropna().mean())


def test_table2_and_published_listing(grid):
    _, dest = grid
    res = load_results(dest)
    t2 = table2(res).set_index(['method', 'variant'])
    fid = pd.concat(pd.read_csv(f) for f in dest.glob('seed-*/*/lora-dc/customize/fidelity.csv'))
    assert t2.loc[('lora', 'dc'), 'clip_i'] == pytest.approx(fid.clip_i.mean()) and t2.loc[('lora', 'dc'), 'n'] == 4
    p = published(dest)
    assert len(p) == 2 * 2 * 2 * 2 * 3 and set(p.seed) == {0, 1}


@pytest.mark.slow
@pytest.mark.skipif(not (repo_root() / 'data' / 'miniworld' / 'base').is_dir(), reason='the embedded miniworld base model is not shipped')
def test_real_smoke_cells_publish_and_rebuild(tmp_path):
    "One real `open-forgetting run` (smoke study, one cell pair, training seed 1), published against the study file's hash."
    run = tmp_path / 'run'
    subprocess.run([sys.executable, '-m', 'open_forgetting.cli', 'run', '--study', 'smoke', '--concepts', 'heart_emblem',
                    '--methods', 'dreambooth', '--variants', 'plain,dc', '--experiments', 'global_drift', '--param', 'appearance=false',
                    '--set', 'training.settings.seed=1', '--run-dir', str(run)], check=True, capture_output=True)
    dest = tmp_path / 'pub'
    assert 'written' in set(publish_run(run, seed=1, dest=dest, study='smoke').action)
    assert set(publish_run(run, seed=1, dest=dest, study='smoke').action) == {'unchanged'}
    with pytest.raises(ValueError, match='hashes to'):           # another recipe is not published under this study's name
        publish_run(run, seed=1, dest=tmp_path / 'x', study='miniworld')
    res = load_results(dest)
    t1 = table1(res)
    sd = pd.concat(pd.read_csv(f) for f in run.glob('*/*/global_drift/semantic_drift.csv'))
    for r in sd[sd.model != 'base'].itertuples():
        row = t1[(t1.dataset == r.dataset) & (t1.method == r.method) & (t1.variant == r.variant)].iloc[0]
        assert row.accuracy == pytest.approx(r.accuracy) and row.worst_drop == pytest.approx(r.worst_drop)
    g = grid_status('smoke', [1], dest, experiments=['customize', 'global_drift'])
    assert set(g[g.concept == 'heart_emblem'].state) == {'published'} and set(g[g.concept != 'heart_emblem'].state) == {'missing'}


@pytest.mark.skipif(published().empty, reason='no grid cell is committed under data/miniworld/results/ yet')
def test_committed_grid_rebuilds_from_its_per_image_rows():
    "The committed grid: Table 1 from `load_results` against numpy on the committed classification files, read directly; every cell published against the shipped study's hash."
    dest = repo_root() / 'data' / 'miniworld' / 'results'
    t1, hand = table1(load_results(dest)), _by_hand(dest)
    for (dataset, cell), h in list(hand.groupby(['dataset', 'cell']))[::5]:   # every fifth model x dataset: a few cells
        method, variant = cell.rsplit('-', 1)
        row = t1[(t1.dataset == dataset) & (t1.method == method) & (t1.variant == variant)].iloc[0]
        assert row.n == len(h)
        assert (row.accuracy, row['drop'], row.worst_drop) == pytest.approx((h.accuracy.mean(), h['drop'].mean(), h.worst_drop.mean()))
    seeds = sorted(set(published(dest).seed))
    assert set(grid_status('miniworld-full', seeds, dest).query("state != 'missing'").state) == {'published'}
