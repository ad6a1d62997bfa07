"""Every papermill parameter reaches what it changes: the customize notebook trains *and* loads the model its overrides
describe (it used to train with the override, then rebuild the study's default and refuse its own run), and a bad
parameter fails at once with its name."""
import papermill as pm
import pandas as pd
import pytest

from open_forgetting.core import load_json
from open_forgetting.runner import experiments_dir, notebook_parameters
from open_forgetting.study import RunLayout


def test_customize_honours_its_overrides(tmp_path):
    out = tmp_path / 'out'
    pm.execute_notebook(str(experiments_dir() / 'customize.ipynb'), str(tmp_path / 'c.ipynb'), kernel_name='python3', progress_bar=False,
                        parameters=dict(run_dir=str(tmp_path / 'run'), out_dir=str(out), variant='dc',
                                        overrides={'training.settings.max_steps': 2, 'drift_correction.lambda_dc': 50, 'training.settings.seed': 1}))
    row = pd.read_csv(out / 'training.csv').iloc[0]
    assert (row.steps, row.lambda_dc) == (2, 50)
    info = load_json(RunLayout(tmp_path / 'run').model('heart_emblem', 'dreambooth', 'dc') / 'run.json')
    assert info['config']['seed'] == 1 and info['config']['max_steps'] == 2
    assert (out / 'fidelity.csv').exists()           # the loader found the run it had just trained


@pytest.mark.parametrize('name,value,message', [('overrides', 'max_steps=2', 'overrides'), ('variant', 'dcpr', "variant='dcpr'"),
                                               ('study', 'no_such_study', 'no_such_study')])
def test_a_bad_parameter_is_named(name, value, message):
    "check_cell is what every experiment notebook calls first on its parameters (the notebook's own defaults for the rest)."
    from open_forgetting.study import check_cell
    import ast
    params = {**{k: ast.literal_eval(v['default']) for k, v in notebook_parameters(experiments_dir() / 'customize.ipynb').items()
                 if k in ('study', 'overrides', 'concept', 'method', 'variant')}, name: value}
    with pytest.raises((ValueError, FileNotFoundError), match=message): check_cell(**params)


def test_a_bad_parameter_stops_the_notebook_before_any_work(tmp_path):
    "One kernel (each costs an import of the library): the notebook itself refuses the value, naming it, and trains nothing."
    with pytest.raises(pm.PapermillExecutionError, match="variant='dcpr'"):
        pm.execute_notebook(str(experiments_dir() / 'customize.ipynb'), str(tmp_path / 'c.ipynb'), kernel_name='python3',
                            progress_bar=False, parameters={'variant': 'dcpr', 'run_dir': str(tmp_path / 'run')})
    assert not list(tmp_path.rglob('*.safetensors'))


def test_every_experiment_notebook_takes_a_study_and_overrides():
    for nb in sorted(experiments_dir().glob('*.ipynb')):
        if nb.stem in ('report',): continue
        assert {'study', 'overrides'} <= set(notebook_parameters(nb)), nb.name
