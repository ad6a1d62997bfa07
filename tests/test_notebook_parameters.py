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
def test_a_bad_parameter_is_named(tmp_path, name, value, message):
    with pytest.raises(pm.PapermillExecutionError, match=message):
        pm.execute_notebook(str(experiments_dir() / 'customize.ipynb'), str(tmp_path / 'c.ipynb'), kernel_name='python3',
                            progress_bar=False, parameters={name: value, 'run_dir': str(tmp_path / 'run')})


def test_every_experiment_notebook_takes_a_study_and_overrides():
    for nb in sorted(experiments_dir().glob('*.ipynb')):
        if nb.stem in ('report',): continue
        assert {'study', 'overrides'} <= set(notebook_parameters(nb)), nb.name
