"""The study runner with real papermill: results, skip-on-rerun after a kill, failures, parameter checks, shards."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from open_forgetting.runner import plan_jobs, run_jobs

PARAMS = "concept = 'x'\nmethod = 'dreambooth'\nvariant = 'plain'\nrun_dir = ''\nout_dir = ''\nscale = 1.0"


def _notebook(path: Path, *bodies: str):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(PARAMS); p.metadata['tags'] = ['parameters']
    nb.cells = [p, *(nbformat.v4.new_code_cell(b) for b in bodies)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


@pytest.fixture
def notebooks(tmp_path):
    d = tmp_path / 'nbs'; d.mkdir()
    # each execution appends its key to executions.log, so a test can count what really ran
    log = "from pathlib import Path\nPath(run_dir, 'executions.log').open('a').write(f'{concept}/{__name__}/NAME\\n')\n"
    _notebook(d / 'customize.ipynb', log.replace('NAME', 'customize') +
              "assert concept != 'broken', 'training diverged'\n"
              "import pandas as pd; pd.DataFrame({'concept': [concept], 'value': [len(concept) * scale]}).to_csv(Path(out_dir, 'result.csv'), index=False)")
    _notebook(d / 'color.ipynb', log.replace('NAME', 'color') +
              "import time\nif Path(run_dir, 'SLOW').exists() and concept == 'b': time.sleep(120)\n"
              "Path(out_dir, 'color.csv').write_text('cdi\\n0.5\\n')")
    return d


def _executions(run_dir):
    p = Path(run_dir) / 'executions.log'
    return p.read_text().split() if p.exists() else []


def test_results_failures_and_independent_recomputation(notebooks, tmp_path):
    run = tmp_path / 'run'
    jobs = plan_jobs(['a', 'broken'], ['dreambooth'], ['dc'], experiments=['color'], parameters={'scale': 2.0})
    status = run_jobs(jobs, run, notebooks, progress=False)
    assert status.set_index('key').status.to_dict() == {
        'a/dreambooth-dc/customize': 'done', 'a/dreambooth-dc/color': 'done',
        'broken/dreambooth-dc/customize': 'failed', 'broken/dreambooth-dc/color': 'blocked'}
    assert 'training diverged' in status.set_index('key').loc['broken/dreambooth-dc/customize', 'error']
    # the executed notebook (with its traceback) is kept beside the failure
    assert (run / 'broken/dreambooth-dc/customize/customize.ipynb').exists()
    # a number recomputed independently from the tidy result file: len('a') * scale
    res = pd.read_csv(run / 'a/dreambooth-dc/customize/result.csv')
    assert res.value.item() == len('a') * 2.0
    assert pd.read_csv(run / 'jobs.csv').shape[0] == 4


def test_unknown_parameter_is_refused_before_running(notebooks, tmp_path):
    jobs = plan_jobs(['a'], ['dreambooth'], ['plain'], experiments=['color'], parameters={'scael': 2.0})
    with pytest.raises(ValueError, match=r"\[.scael.\].*no experiment notebook"):
        run_jobs(jobs, tmp_path / 'run', notebooks, progress=False)
    assert _executions(tmp_path / 'run') == []


def test_rerun_after_kill_skips_finished_notebooks(notebooks, tmp_path):
    run = tmp_path / 'run'; run.mkdir(); (run / 'SLOW').write_text('')
    # the runner in its own process (the CLI wraps the same call with a study's grid)
    cmd = [sys.executable, '-c', "import sys; from open_forgetting.runner import plan_jobs, run_jobs; "
           "run_jobs(plan_jobs(['a', 'b'], ['dreambooth'], ['plain'], ['color']), sys.argv[1], sys.argv[2], progress=False)",
           str(run), str(notebooks)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = run / 'b/dreambooth-plain/customize/_SUCCESS.json'
    deadline = time.time() + 180
    while not target.exists() and time.time() < deadline: time.sleep(0.5)
    while len(_executions(run)) < 4 and time.time() < deadline: time.sleep(0.5)  # b's color notebook is now sleeping
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    assert target.exists(), 'the runner did not reach the second concept in time'
    first = _executions(run)
    assert first == ['a/__main__/customize', 'a/__main__/color', 'b/__main__/customize', 'b/__main__/color']
    from open_forgetting.runner import run_status
    assert run_status(run).set_index('key').status.to_dict() == {   # the killed runner's job is seen as interrupted
        'a/dreambooth-plain/customize': 'done', 'a/dreambooth-plain/color': 'done',
        'b/dreambooth-plain/customize': 'done', 'b/dreambooth-plain/color': 'interrupted'}
    (run / 'SLOW').unlink()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _executions(run) == first + ['b/__main__/color'], 'finished notebooks must not be recomputed'
    status = pd.read_csv(run / 'jobs.csv').set_index('key').status
    assert status['a/dreambooth-plain/color'] == 'skipped (done)' and status['b/dreambooth-plain/color'] == 'done'


def test_shards_cover_the_grid_once(notebooks, tmp_path):
    from open_forgetting.runner import shard_jobs
    jobs = plan_jobs(['a', 'b'], ['dreambooth'], ['plain'], experiments=['color'])
    for i in (0, 1): run_jobs(shard_jobs(jobs, i, 2), tmp_path / 'run', notebooks, progress=False)
    assert sorted(_executions(tmp_path / 'run')) == sorted(f'{c}/__main__/{e}' for c in 'ab' for e in ('customize', 'color'))


def test_every_experiment_notebook_declares_the_runner_parameters():
    "papermill silently skips parameter lines it cannot parse (e.g. quotes in comments); the runner and the CLI need these."
    from open_forgetting.runner import experiments_dir, notebook_parameters, MEASUREMENTS
    for name in ('customize', *MEASUREMENTS):
        declared = set(notebook_parameters(experiments_dir() / f'{name}.ipynb'))
        assert {'concept', 'method', 'variant', 'run_dir', 'out_dir', 'study', 'overrides'} <= declared, (name, declared)
    assert {'run_dir', 'figures_dir'} <= set(notebook_parameters(experiments_dir() / 'report.ipynb'))


PROBE = """import json, os
from pathlib import Path
from open_forgetting.runner import run_status
log = Path(out_dir, 'probe.log').read_text()
running = json.loads(Path(out_dir, '_RUNNING.json').read_text())
Path(out_dir, 'seen.json').write_text(json.dumps({'log': log, 'running': running, 'kernel_parent': os.getppid(),
                                                  'status': run_status(run_dir).set_index('key').status.to_dict()}))"""


def test_a_running_job_is_observable_from_outside(tmp_path):
    "Real papermill: the kernel sees its earlier cell's output already in the job's log, its _RUNNING.json, and itself as running."
    from open_forgetting.runner import Job, run_status
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    _notebook(nbs / 'probe.ipynb', "print('hello from the kernel')", PROBE)
    run = tmp_path / 'run'
    status = run_jobs([Job('probe', 'a', 'dreambooth', 'plain')], run, nbs, progress=False)
    assert status.status.tolist() == ['done'], status.error.tolist()
    seen = json.loads((run / 'a/dreambooth-plain/probe/seen.json').read_text())
    assert 'hello from the kernel' in seen['log'], 'the output must be in the log while the notebook still runs'
    assert seen['running']['pid'] == os.getpid() == seen['kernel_parent']
    assert seen['status'] == {'a/dreambooth-plain/probe': 'running'}
    assert run_status(run).status.tolist() == ['done'] and not (run / 'a/dreambooth-plain/probe/_RUNNING.json').exists()


def test_cell_times_find_the_slow_cell_of_a_real_run(tmp_path, capsys):
    "Papermill's per-cell durations, read back: a cell that sleeps 1 s is the slowest, and no cell takes longer than its notebook."
    from open_forgetting.cli import main
    from open_forgetting.runner import cell_times, slowest_cells
    d = tmp_path / 'nbs'; d.mkdir()
    _notebook(d / 'customize.ipynb', "x = 1", "import time\ntime.sleep(1.0)", "y = x + 1")
    run = tmp_path / 'run'
    run_jobs(plan_jobs(['a', 'b'], ['dreambooth'], ['plain'], experiments=[]), run, d, progress=False)
    times = cell_times(run)
    assert sorted(times.key.unique()) == ['a/dreambooth-plain/customize', 'b/dreambooth-plain/customize']
    assert len(times) == 2 * 3                                   # the parameters cells are not counted
    top = slowest_cells(times, 1).iloc[0]
    assert (top.experiment, top.cell, top.code, top.runs) == ('customize', 2, 'import time', 2)   # code cells of the source: parameters, x = 1, the sleep
    assert 2.0 <= top.total < 2.0 + 1.0 and (times.seconds <= times.notebook_seconds).all()
    assert main(['status', str(run), '--cells', '2']) == 0
    out = capsys.readouterr().out
    assert '2 jobs: 2 done' in out and 'customize cell 2: import time' in out
