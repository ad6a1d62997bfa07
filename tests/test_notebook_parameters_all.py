"""Every papermill parameter of every experiment notebook is honoured end to end (issue 20, item 4).

Fast (always run): papermill sees every name the `parameters` cell assigns (a comment papermill cannot parse hides a
parameter from `inspect_notebook`, so `open-forgetting run --param` refuses it), and every parameter is read after the
parameters cell (an unused parameter silently does nothing).

Slow (opt-in, `OPEN_FORGETTING_SLOW=1`; 45 tests, ~45 notebook runs, 25 min on a busy 2-core CPU): each notebook runs on the `smoke` study
with each parameter changed, one at a time, and the change must show in what the notebook wrote: the identity columns
*and* the numbers of the customized model (or the files written, for switches and folders). One baseline run per
notebook sets `run_dir` and `out_dir` (checked on it); the grid's models are trained once into a shared run folder.
The audit notebook (outside the grid) audits its demonstration LoRA by default; its checks are at the end.
A parameter without a check here fails `test_every_parameter_has_a_check`, so a new parameter needs a new check.
"""
import ast, json, shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest

from open_forgetting.plots import CONTROL_LABEL
from open_forgetting.runner import experiments_dir
from open_forgetting.study import RunLayout, shipped_studies

NOTEBOOKS = sorted(p.stem for p in experiments_dir().glob('*.ipynb'))


def _cells(name: str) -> tuple[int, list]:
    cells = nbformat.read(experiments_dir() / f'{name}.ipynb', as_version=4).cells
    i = next(i for i, c in enumerate(cells) if 'parameters' in c.metadata.get('tags', []))
    return i, cells

def _assigned(source: str) -> list[str]:
    "Names a parameters cell assigns at top level, in order (independently of papermill's line parser)."
    return [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]

def _code(source: str) -> str:
    "A cell's source without IPython magics and shell lines (not Python)."
    return '\n'.join('' if line.lstrip().startswith(('%', '!')) else line for line in source.splitlines())

def _loaded_names(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(_code(source))) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


# ------------------------------------------------------------------ fast, static
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_papermill_sees_every_parameter(name):
    i, cells = _cells(name)
    assigned = _assigned(cells[i].source)
    assert assigned, f'{name}: empty parameters cell'
    assert list(pm.inspect_notebook(str(experiments_dir() / f'{name}.ipynb'))) == assigned, \
        f"{name}: papermill cannot parse some parameter line (a comment with '' in it?): it sees fewer names than the cell assigns"

@pytest.mark.parametrize('name', NOTEBOOKS)
def test_every_parameter_is_read_after_the_parameters_cell(name):
    i, cells = _cells(name)
    read = set().union(*(_loaded_names(c.source) for c in cells[i + 1:] if c.cell_type == 'code'))
    unused = [p for p in _assigned(cells[i].source) if p not in read]
    assert not unused, f'{name}: parameter(s) {unused} are never read after the parameters cell, so setting them does nothing'


# ------------------------------------------------------------------ slow, end to end
COMMON = ('concept', 'method', 'variant', 'study', 'overrides', 'run_dir', 'out_dir')
# per notebook: (table, value column) whose customized-model rows must change when the model does
VALUES = {'customize': ('fidelity', 'clip_i'), 'color': ('cdi', 'cdi'), 'diversity': ('diversity', 'vendi'),
          'drift_map': ('drift_map', 'drift'), 'global_drift': ('clip_i', 'clip_i'), 'local_drift': ('clip_i', 'clip_i')}
SPECIFIC = {'color': ('n_plot_prompts',), 'drift_map': ('vocabulary', 'template', 'n_samples', 'latents', 'top_k'),
            'global_drift': ('semantic', 'appearance'), 'report': ('run_dir', 'figures_dir'),
            'audit': ('base', 'tuned', 'study', 'overrides', 'concept', 'instance_prompt', 'vocabulary', 'scale', 'run_dir', 'out_dir')}
OWN = ('report', 'audit')                             # notebooks outside the study grid: only their own parameters
OTHER = dict(concept='arrow_emblem', method='lora', variant='plain')
STUDY_EDIT = {'seeds': {'paired': [0, 3, 4]}, 'appearance': {'n_generic_prompts': 2}, 'classification': {'n_per_class': 1}}
OVERRIDES = {'seeds.paired': [5, 6, 7], 'appearance.n_generic_prompts': 4, 'classification.n_per_class': 1}   # KID needs >= 2 images a side


def _checks(name: str) -> list[str]:
    return list(SPECIFIC.get(name, ())) if name in OWN else [*COMMON, *SPECIFIC.get(name, ())]

def test_every_parameter_has_a_check():
    for name in NOTEBOOKS:
        assert set(pm.inspect_notebook(str(experiments_dir() / f'{name}.ipynb'))) == set(_checks(name)), name


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "Execute a notebook once per distinct parameter set (memoized); returns its output folder."
    root = tmp_path_factory.mktemp('nbparams')
    shared, done = root / 'run', {}
    study = root / 'study' / 'edited.yaml'; study.parent.mkdir()
    import yaml
    data = yaml.safe_load(shipped_studies()['smoke'].read_text())
    for section, values in STUDY_EDIT.items(): data[section] = {**data.get(section, {}), **values}
    data['name'] = 'smoke-edited'
    study.write_text(yaml.safe_dump(data))

    def run(name: str, **params) -> Path:
        key = (name, json.dumps(params, sort_keys=True, default=str))
        if key in done: return done[key]
        tag = f'{name}-{len(done)}'
        out = root / tag
        full = {'run_dir': str(shared), 'out_dir': str(out), **params}
        if full.get('study') == 'EDITED': full['study'] = str(study)
        pm.execute_notebook(str(experiments_dir() / f'{name}.ipynb'), str(root / f'{tag}.ipynb'), parameters=full,
                            kernel_name='python3', progress_bar=False, cwd=str(root))
        done[key] = out
        return out
    run.shared = shared
    return run


def _table(out: Path, name: str) -> pd.DataFrame:
    path = out / f'{name}.csv'
    assert path.is_file(), f'{path} was not written'
    return pd.read_csv(path)

def _model_values(name: str, out: Path) -> np.ndarray:
    "The customized model's numbers in the notebook's main table (not the base model's, not the control's)."
    table, col = VALUES[name]
    t = _table(out, table)
    if 'model' in t: t = t[~t.model.isin(['base', CONTROL_LABEL])]
    assert len(t), f'{name}: no customized-model rows in {table}.csv'
    return t[col].to_numpy(dtype=float)


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.allclose(a, b, rtol=1e-6, atol=1e-9)


MEASURE = [n for n in NOTEBOOKS if n in VALUES]

@pytest.mark.slow
@pytest.mark.parametrize('name', MEASURE)
@pytest.mark.parametrize('param', ['concept', 'method', 'variant'])
def test_the_grid_cell_reaches_the_model_and_the_tables(runs, name, param):
    base, changed = runs(name), runs(name, **{param: OTHER[param]})
    table = _table(changed, VALUES[name][0])
    assert set(table[param]) == {OTHER[param]}, f'{name}: {param} column {set(table[param])} after {param}={OTHER[param]!r}'
    assert _differs(_model_values(name, changed), _model_values(name, base)), f'{name}: {param} changed, the model\'s numbers did not'
    cell = dict(concept='heart_emblem', method='dreambooth', variant='dc') | {param: OTHER[param]}
    info = json.loads((RunLayout(runs.shared).model(**cell) / 'run.json').read_text())
    assert info['config']['method'] == cell['method'] and info['config']['variant'] == cell['variant']


def _seen(name: str, out: Path, edit: dict) -> bool:
    "Does the output show the study edit (paired seeds, number of generic prompts, images per class)?"
    if name == 'customize':                       # fidelity generates from the paired seeds
        return int(_table(out, 'fidelity').n_generated.iloc[0]) == len(edit['seeds.paired'])
    if name in ('color', 'diversity'):
        return _table(out, VALUES[name][0]).prompt.nunique() == edit['appearance.n_generic_prompts']
    if name == 'drift_map': return set(_table(out, 'top_k_manifest').seed) == set(edit['seeds.paired'][:2])
    if name in ('global_drift', 'audit'):
        per_class = _table(out, 'classification').groupby(['model', 'dataset', 'label']).size()
        return set(per_class) == {edit['classification.n_per_class']} and \
            _table(out, 'clip_i').prompt.nunique() == edit['appearance.n_generic_prompts']
    if name == 'local_drift': return set(_table(out, 'manifest').seed) >= set(edit['seeds.paired'])
    raise AssertionError(name)

@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in NOTEBOOKS if n != 'report'])
def test_study_file_content_reaches_the_results(runs, name):
    edit = {'seeds.paired': STUDY_EDIT['seeds']['paired'], 'appearance.n_generic_prompts': STUDY_EDIT['appearance']['n_generic_prompts'],
            'classification.n_per_class': STUDY_EDIT['classification']['n_per_class']}
    assert not _seen(name, runs(name), edit), f'{name}: the baseline already looks edited; the check proves nothing'
    assert _seen(name, runs(name, study='EDITED'), edit)

@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in NOTEBOOKS if n != 'report'])
def test_overrides_reach_the_results(runs, name):
    assert not _seen(name, runs(name), OVERRIDES)
    assert _seen(name, runs(name, overrides=OVERRIDES), OVERRIDES)

@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in NOTEBOOKS if n not in OWN])
def test_run_dir_and_out_dir_are_where_results_go(runs, name):
    out = runs(name)
    assert list(out.glob('*.csv')), f'{name}: nothing written into out_dir'
    assert (RunLayout(runs.shared).model('heart_emblem', 'dreambooth', 'dc') / 'trained.safetensors').is_file()
    default = RunLayout(runs.shared).experiment('heart_emblem', 'dreambooth', 'dc', name)   # customize keeps its model/ there
    assert not list(default.glob('*.csv')), f'{name}: wrote tables into the default layout although out_dir was given'


@pytest.mark.slow
def test_color_n_plot_prompts(runs):
    assert (runs('color') / 'chromaticity_1.csv').is_file()
    out = runs('color', n_plot_prompts=1)
    assert (out / 'chromaticity_0.csv').is_file() and not (out / 'chromaticity_1.csv').exists()

@pytest.mark.slow
@pytest.mark.parametrize('param,value', [('vocabulary', 'miniworld:colour'), ('template', 'a {} thing'), ('n_samples', 4),
                                         ('latents', 'noise'), ('top_k', 2)])
def test_drift_map_parameters(runs, param, value):
    base, out = _table(runs('drift_map'), 'drift_map'), runs('drift_map', **{param: value})
    table = _table(out, 'drift_map')
    if param == 'vocabulary':
        assert set(table.vocabulary) == {value} and not set(table.vocab_concept) & set(base.vocab_concept)
    elif param == 'template':
        assert all(p == value.format(c) for p, c in zip(table.prompt, table.vocab_concept)) and not table.prompt.equals(base.prompt)
    elif param == 'n_samples':
        assert set(table.n_samples) == {4} and set(base.n_samples) == {16}
    elif param == 'latents':
        assert _differs(table.sort_values('vocab_concept').drift.to_numpy(), base.sort_values('vocab_concept').drift.to_numpy())
    else:
        assert _table(out, 'top_k_manifest').prompt.nunique() == 2 and _table(runs('drift_map'), 'top_k_manifest').prompt.nunique() == 4

@pytest.mark.slow
@pytest.mark.parametrize('param', ['semantic', 'appearance'])
def test_global_drift_switches(runs, param):
    files = {'semantic': 'classification.csv', 'appearance': 'clip_i.csv'}
    base, out = runs('global_drift'), runs('global_drift', **{param: False})
    assert (base / files[param]).is_file() and not (out / files[param]).exists()
    other = files['appearance' if param == 'semantic' else 'semantic']
    assert (out / other).is_file()                    # only the switched-off half is skipped

@pytest.mark.slow
def test_report_reads_run_dir_and_writes_figures_dir(runs, tmp_path):
    "The report aggregates the run folder it is given (a copy of one cell's global-drift results) into figures_dir."
    gd = runs('global_drift')
    run = tmp_path / 'run'; cell = RunLayout(run).experiment('heart_emblem', 'dreambooth', 'dc', 'global_drift')
    shutil.copytree(gd, cell)
    figures = tmp_path / 'figures'
    pm.execute_notebook(str(experiments_dir() / 'report.ipynb'), str(tmp_path / 'report.ipynb'), kernel_name='python3',
                        progress_bar=False, parameters=dict(run_dir=str(run), figures_dir=str(figures)))
    table1 = pd.read_csv(run / 'table1.csv')
    assert set(table1.dataset) == set(pd.read_csv(gd / 'semantic_drift.csv').dataset)
    assert {p.name for p in figures.glob('*.png')} >= {'figure1_grid.png', 'figure2_clip_i.png'}
    assert not (run / 'figures').exists()             # figures_dir given: nothing in the default place


# ------------------------------------------------------------------ the audit notebook (slow, end to end)
def _tuned(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.model == 'tuned']

@pytest.mark.slow
def test_audit_demonstration_trains_into_run_dir_and_reports_into_out_dir(runs):
    out = runs('audit')
    assert {'report.html', 'report.md', 'semantic_drift.csv', 'clip_i.csv'} <= {p.name for p in out.iterdir()}
    cell = RunLayout(runs.shared)
    assert (cell.model('heart_emblem', 'lora', 'plain') / 'trained.safetensors').is_file()   # the study's first concept
    assert (cell.experiment('heart_emblem', 'lora', 'plain', 'audit') / 'heart_emblem-lora.safetensors').is_file()
    assert 'heart_emblem-lora.safetensors against miniworld' in (out / 'report.md').read_text()

@pytest.mark.slow
def test_audit_tuned_is_the_model_measured(runs):
    from open_forgetting.study import ensure_customized, load_study
    other = ensure_customized(load_study('smoke'), runs.shared, 'heart_emblem', 'dreambooth', 'dc')
    base, out = runs('audit'), runs('audit', tuned=str(other))
    assert f'Audit of {other} against' in (out / 'report.md').read_text()
    assert _differs(_tuned(_table(out, 'clip_i')).clip_i.to_numpy(), _tuned(_table(base, 'clip_i')).clip_i.to_numpy())

@pytest.mark.slow
def test_audit_base_from_a_folder_gives_the_same_numbers(runs, tmp_path):
    "The embedded base written as a diffusers folder: the report names the folder, every number is the same (same weights)."
    from open_forgetting.models import save_components
    from open_forgetting.study import load_base, load_study
    folder = save_components(load_base(load_study('smoke')), tmp_path / 'base')
    lora = RunLayout(runs.shared).experiment('heart_emblem', 'lora', 'plain', 'audit') / 'heart_emblem-lora.safetensors'
    base = runs('audit', tuned=str(lora))
    out = runs('audit', tuned=str(lora), base=str(folder))
    assert f'against {folder}' in (out / 'report.md').read_text() and f'against {folder}' not in (base / 'report.md').read_text()
    for name, col in [('semantic_drift', 'accuracy'), ('clip_i', 'clip_i'), ('cdi', 'cdi')]:
        assert np.array_equal(_table(out, name)[col].to_numpy(), _table(base, name)[col].to_numpy()), name

@pytest.mark.slow
def test_audit_scale_zero_is_the_base_model(runs):
    "A LoRA at scale 0 changes nothing: the tuned model's images are the base's (CDI 0, drop 0); at scale 1 they are not."
    base, out = runs('audit'), runs('audit', scale=0.0)
    assert (_tuned(_table(out, 'cdi')).cdi == 0).all() and not (_tuned(_table(base, 'cdi')).cdi == 0).all()
    assert (_tuned(_table(out, 'semantic_drift'))['drop'] == 0).all()

@pytest.mark.slow
def test_audit_concept_instance_prompt_and_vocabulary_add_their_tables(runs):
    base = runs('audit')
    assert not {'local_clip_i.csv', 'fidelity.csv', 'drift_map.csv'} & {p.name for p in base.iterdir()}
    out = runs('audit', concept='arrow_emblem')
    assert len(_table(out, 'local_clip_i')) and not (out / 'fidelity.csv').exists()
    assert (RunLayout(runs.shared).model('arrow_emblem', 'lora', 'plain') / 'trained.safetensors').is_file()   # the demo's concept
    prompt = json.loads((RunLayout(runs.shared).model('heart_emblem', 'lora', 'plain') / 'run.json').read_text())['instance_prompt']
    out = runs('audit', concept='heart_emblem', instance_prompt=prompt)
    assert len(_table(out, 'fidelity')) and len(_table(out, 'local_clip_i'))
    out = runs('audit', vocabulary='miniworld:shape')
    assert set(_table(out, 'drift_map').concept) == set(_table(base, 'per_class').query("dataset == 'miniworld:shape'").classname)
