"""Runner markers, names, status tables and status reading, with a fake executor (no kernels): issue 20's runner
defects (markers ignoring notebook content and identity, absolute paths in markers, a damaged marker aborting the
study, names escaping the run folder, one jobs.csv overwritten by every shard) and issue 13's observability."""
import json, os, shutil, warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from open_forgetting.runner import Job, plan_jobs, run_jobs, shard_jobs

PARAMS = "concept = 'x'\nmethod = 'dreambooth'\nvariant = 'plain'\nrun_dir = ''\nout_dir = ''\nscale = 1.0"


def _notebook(path: Path, body: str, note: str = 'a note'):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(PARAMS); p.metadata['tags'] = ['parameters']
    nb.cells = [nbformat.v4.new_markdown_cell(note), p, nbformat.v4.new_code_cell(body)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


class FakeExecutor:
    "Stands in for papermill.execute_notebook: records what ran, writes the executed copy and a result file."
    def __init__(self, fail=()): self.ran, self.fail, self.tables = [], set(fail), []

    def __call__(self, inp, out, parameters, cwd=None, **kw):
        key = str(Path(out).parent.relative_to(Path(parameters['run_dir'])))
        self.ran.append(key)
        self.tables.append(sorted(p.name for p in Path(parameters['run_dir']).glob('jobs*.csv')))
        if key in self.fail: raise RuntimeError(f'boom in {key}\nValueError: the last line')
        Path(out).write_text('{}')
        Path(out).with_name('result.json').write_text(json.dumps({'value': len(parameters['concept']) * parameters.get('scale', 1)}))


@pytest.fixture
def notebooks(tmp_path):
    d = tmp_path / 'nbs'; d.mkdir()
    _notebook(d / 'customize.ipynb', "print('train')"); _notebook(d / 'color.ipynb', "print('color')")
    return d


def _jobs(**kw):
    return plan_jobs(['a', 'b'], ['dreambooth'], ['dc'], experiments=['color'], parameters={'scale': 2.0}, **kw)


def _status(table): return table.set_index('key').status.to_dict()


def test_moving_the_run_folder_keeps_finished_jobs(notebooks, tmp_path):
    run, fake = tmp_path / 'run', FakeExecutor()
    run_jobs(_jobs(), run, notebooks, execute=fake, progress=False)
    shutil.move(run, tmp_path / 'moved')
    status = run_jobs(_jobs(), tmp_path / 'moved', notebooks, execute=fake, progress=False)
    assert set(status.status) == {'skipped (done)'} and len(fake.ran) == 4


def test_an_edited_notebook_reruns_its_jobs_and_says_why(notebooks, tmp_path, capsys):
    run, fake = tmp_path / 'run', FakeExecutor()
    run_jobs(_jobs(), run, notebooks, execute=fake, progress=False)
    _notebook(notebooks / 'color.ipynb', "print('color')", note='only the prose changed')
    assert set(run_jobs(_jobs(), run, notebooks, execute=fake, progress=False).status) == {'skipped (done)'}
    _notebook(notebooks / 'color.ipynb', "print('colour, fixed')")
    status = run_jobs(_jobs(), run, notebooks, execute=fake, progress=False)
    assert _status(status) == {'a/dreambooth-dc/customize': 'skipped (done)', 'a/dreambooth-dc/color': 'done',
                               'b/dreambooth-dc/customize': 'skipped (done)', 'b/dreambooth-dc/color': 'done'}
    assert 'notebook content' in status.set_index('key').note['a/dreambooth-dc/color']
    assert 'a/dreambooth-dc/color finished before with other settings' in capsys.readouterr().out


def test_identity_and_parameters_are_keyed_and_the_differing_field_named(notebooks, tmp_path):
    run, fake = tmp_path / 'run', FakeExecutor()
    run_jobs(_jobs(identity={'study': 'hash1'}), run, notebooks, execute=fake, progress=False)
    assert set(run_jobs(_jobs(identity={'study': 'hash1'}), run, notebooks, execute=fake, progress=False).status) == {'skipped (done)'}
    status = run_jobs(_jobs(identity={'study': 'hash2'}), run, notebooks, execute=fake, progress=False)
    assert set(status.status) == {'done'}
    assert status.note.str.contains("identity.study: 'hash1' -> 'hash2'", regex=False).all()
    jobs = plan_jobs(['a'], ['dreambooth'], ['dc'], experiments=['color'], parameters={'scale': 3.0}, identity={'study': 'hash2'})
    status = run_jobs(jobs, run, notebooks, execute=fake, progress=False)
    assert status.note.str.contains('parameters.scale: 2.0 -> 3.0', regex=False).all()


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'garbage'])
def test_a_damaged_marker_is_set_aside_and_its_job_reruns(notebooks, tmp_path, damage):
    run, fake = tmp_path / 'run', FakeExecutor()
    run_jobs(_jobs(), run, notebooks, execute=fake, progress=False)
    marker = run / 'a/dreambooth-dc/customize/_SUCCESS.json'
    sound = json.loads(marker.read_text())
    data = marker.read_bytes()
    if damage == 'truncate': marker.write_bytes(data[: len(data) // 2])
    elif damage == 'flip': marker.write_text(marker.read_text().replace('"scale": 2', '"scale": 3'))   # still valid JSON
    else: marker.write_bytes(bytes(b ^ 0xFF for b in data[:40]) + data[40:])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        status = run_jobs(_jobs(), run, notebooks, execute=fake, progress=False)
    assert _status(status)['a/dreambooth-dc/customize'] == 'done' and fake.ran.count('a/dreambooth-dc/customize') == 2
    assert (status.status == 'skipped (done)').sum() == 3
    assert any('_SUCCESS.json' in str(x.message) and 'damaged' in str(x.message) for x in w)
    assert len(list(marker.parent.glob('_SUCCESS.json.damaged-*'))) == 1
    again = json.loads(marker.read_text())
    assert {k: again[k] for k in ('key', 'parameters', 'notebook', 'identity')} == \
           {k: sound[k] for k in ('key', 'parameters', 'notebook', 'identity')}


@pytest.mark.parametrize('name', ['../../x', '/tmp/absolute', 'a/b', '..', '.hidden', ''])
def test_names_cannot_escape_the_run_folder(name, tmp_path):
    for args in ([name], ['dreambooth'], ['dc']), (['a'], [name], ['dc']), (['a'], ['dreambooth'], [name]):
        with pytest.raises(ValueError, match='cannot be used as a folder name'):
            plan_jobs(*args, experiments=['color'])
    with pytest.raises(ValueError, match='experiment='):
        Job(name, 'a', 'dreambooth', 'dc')


def test_each_shard_writes_its_own_table_and_they_merge(notebooks, tmp_path):
    from open_forgetting.runner import merge_job_tables
    run, jobs = tmp_path / 'run', _jobs()
    fake = FakeExecutor(fail={'b/dreambooth-dc/customize'})
    for i in (0, 1): run_jobs(shard_jobs(jobs, i, 2), run, notebooks, execute=fake, progress=False, shard=(i, 2))
    assert sorted(p.name for p in run.glob('jobs*.csv')) == ['jobs-1of2.csv', 'jobs-2of2.csv']
    assert len(pd.read_csv(run / 'jobs-1of2.csv')) == 2 and len(pd.read_csv(run / 'jobs-2of2.csv')) == 2
    merged = merge_job_tables(run)
    assert _status(merged) == {'a/dreambooth-dc/customize': 'done', 'a/dreambooth-dc/color': 'done',
                               'b/dreambooth-dc/customize': 'failed', 'b/dreambooth-dc/color': 'blocked'}
    assert merged.set_index('key').error['b/dreambooth-dc/customize'] == 'RuntimeError: ValueError: the last line'
    assert _status(pd.read_csv(run / 'jobs-merged.csv')) == _status(merged)


def test_the_table_is_on_disk_before_every_job_with_an_eta(notebooks, tmp_path):
    run, fake = tmp_path / 'run', FakeExecutor()
    seen = []
    def spy(inp, out, parameters, **kw):
        seen.append(pd.read_csv(run / 'jobs.csv')); fake(inp, out, parameters, **kw)
    run_jobs(_jobs(), run, notebooks, execute=spy, progress=False)
    assert [t.status.tolist() for t in seen] == [
        ['running', 'pending', 'pending', 'pending'], ['done', 'running', 'pending', 'pending'],
        ['done', 'done', 'running', 'pending'], ['done', 'done', 'done', 'running']]
    assert seen[0].eta_seconds.isna().all() and (seen[2].eta_seconds.iloc[2:] > 0).all()
    assert not list(run.glob('.jobs.csv.*.tmp'))


def test_status_lists_every_job_with_the_last_error_line(notebooks, tmp_path):
    from open_forgetting.runner import run_status, format_status
    run = tmp_path / 'run'
    jobs = plan_jobs(['a', 'b', 'c'], ['dreambooth'], ['dc'], experiments=['color'], parameters={'scale': 2.0})
    run_jobs(jobs[:4], run, notebooks, execute=FakeExecutor(fail={'b/dreambooth-dc/customize'}), progress=False)
    st = run_status(run, jobs, notebooks).set_index('key')
    assert st.status.tolist() == ['done', 'done', 'failed', 'blocked', 'pending', 'pending']
    assert st.error['b/dreambooth-dc/customize'] == 'RuntimeError: ValueError: the last line'
    before = sorted(str(p) for p in run.rglob('*'))
    (run / 'a/dreambooth-dc/color/_SUCCESS.json').write_text('{"trunc')
    text = format_status(run_status(run))
    assert text.splitlines()[0] == '4 jobs: 1 failed, 1 blocked, 1 pending, 1 done' and 'the last line' in text
    assert sorted(str(p) for p in run.rglob('*')) == before, 'reading the status must not change the run folder'


def test_an_unkeyed_locator_can_move_when_identity_covers_its_content(notebooks, tmp_path):
    "A study file moved elsewhere (same content hash in identity) reuses finished jobs; other content reruns them."
    for nb in ('customize', 'color'):
        _notebook(notebooks / f'{nb}.ipynb', "print('x')")
        text = (notebooks / f'{nb}.ipynb').read_text().replace("scale = 1.0", "scale = 1.0\\nstudy = ''")
        (notebooks / f'{nb}.ipynb').write_text(text)
    run, fake = tmp_path / 'run', FakeExecutor()
    def jobs(path, digest): return plan_jobs(['a'], ['dreambooth'], ['dc'], ['color'], parameters={'study': path},
                                             identity={'study': digest}, unkeyed=['study'])
    run_jobs(jobs('/home/me/s.yaml', 'h1'), run, notebooks, execute=fake, progress=False)
    assert set(run_jobs(jobs('/elsewhere/s.yaml', 'h1'), run, notebooks, execute=fake, progress=False).status) == {'skipped (done)'}
    assert set(run_jobs(jobs('/elsewhere/s.yaml', 'h2'), run, notebooks, execute=fake, progress=False).status) == {'done'}
