"""Issue 6 acceptance: the runner end to end on the smoke setting (two concepts, DreamBooth-DC), then the report,
and one number of the report recomputed independently from the result files.

This is the default suite's end-to-end path (the CLI, papermill, training, classification, the report notebook). The
plain variant and the colour dataset are left out (four jobs, one classification set, `--set` on the way): the runner
treats every variant alike, and tests/test_audit.py trains and evaluates the plain variant of the same study in
process. `make test-slow` runs the report notebook's own two-variant smoke run."""
import subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from open_forgetting.core import repo_root

pytestmark = pytest.mark.skipif(not (repo_root() / 'data' / 'miniworld' / 'base').is_dir(),
                                reason='the embedded miniworld base model is not shipped in this checkout')


def test_runner_end_to_end_and_report(tmp_path):
    run = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'open_forgetting.cli', 'run', '--study', 'smoke', '--concepts', 'heart_emblem,arrow_emblem',
           '--methods', 'dreambooth', '--variants', 'dc', '--experiments', 'global_drift', '--run-dir', str(run),
           '--param', 'appearance=false', '--set', "classification.datasets={'miniworld:shape': {}}"]
    subprocess.run(cmd, check=True, capture_output=True)
    status = pd.read_csv(run / 'jobs.csv')
    assert (status.status == 'done').all() and len(status) == 4
    import papermill as pm
    pm.execute_notebook(str(repo_root() / 'nbs/experiments/report.ipynb'), str(run / 'report.ipynb'),
                        parameters={'run_dir': str(run)}, kernel_name='python3', progress_bar=False)
    table1 = pd.read_csv(run / 'table1.csv')
    row = table1[(table1.method == 'dreambooth') & (table1.variant == 'dc') & (table1.dataset == 'miniworld:shape')]
    # independent route: pool the per-image classification files by hand
    files = sorted(run.glob('*/dreambooth-dc/global_drift/classification.csv'))
    assert len(files) == 2
    per_image = pd.concat(pd.read_csv(f) for f in files)
    mine = per_image[(per_image.method == 'dreambooth') & (per_image.variant == 'dc') & (per_image.dataset == 'miniworld:shape')]
    assert len(row) == 1 and row.accuracy.item() == pytest.approx(100 * mine.correct.mean())
    assert (run / 'figures' / 'figure1_grid.png').exists() is False  # appearance was switched off: no Figure 1
    # a re-run skips every finished notebook
    subprocess.run(cmd, check=True, capture_output=True)
    assert (pd.read_csv(run / 'jobs.csv').status == 'skipped (done)').all()
