"""Installable as a package: the built wheel, installed (not editable) into a fresh environment, finds its study files,
data files and experiment notebooks through importlib.resources and runs a smoke notebook from outside the checkout."""
import os, shutil, site, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from open_forgetting.core import repo_root

# slow (~2 min quiet, 6 under load): a wheel build, a fresh environment and a study run in it; `make test-slow`
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which('uv') is None, reason='building and installing the wheel here uses uv')]


def _run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_installed_wheel_runs_outside_the_checkout(tmp_path):
    wheels, env_dir, work = tmp_path / 'wheels', tmp_path / 'env', tmp_path / 'work'
    work.mkdir()
    _run(['uv', 'build', '--wheel', '-q', '-o', wheels, '--python', sys.executable, repo_root()])
    _run(['uv', 'venv', '-q', '-p', sys.executable, env_dir])
    py = env_dir / 'bin' / 'python'
    _run(['uv', 'pip', 'install', '-q', '--no-deps', '-p', py, *wheels.glob('*.whl')])
    # dependencies from this environment's site-packages, by path only: its .pth files (our editable install's
    # finder among them) are not processed, so `import open_forgetting` can only find the installed copy
    env_site = Path(_run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).strip())
    (env_site / '_deps.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    _run([py, '-m', 'ipykernel', 'install', '--sys-prefix', '--name', 'python3'])
    env = {**os.environ, 'OPEN_FORGETTING_HOME': str(tmp_path / 'home'), 'PYTHONPATH': ''}
    where = _run([py, '-c', 'import open_forgetting; print(open_forgetting.__file__)'], cwd=work, env=env)
    assert str(env_dir) in where, where
    assert 'open_forgetting' in _run([env_dir / 'bin' / 'open-forgetting', 'info'], cwd=work, env=env)
    run = work / 'run'
    _run([env_dir / 'bin' / 'open-forgetting', 'run', '--study', 'smoke', '--concepts', 'heart_emblem', '--methods', 'dreambooth',
          '--variants', 'plain', '--experiments', 'global_drift', '--param', 'appearance=false', '--run-dir', run],
         cwd=work, env={**env, 'PATH': f"{env_dir / 'bin'}:{os.environ['PATH']}"})
    status = pd.read_csv(next(run.glob('jobs*.csv')))
    assert (status.status == 'done').all(), status
    assert (run / 'heart_emblem' / 'dreambooth-plain' / 'global_drift' / 'semantic_drift.csv').exists()
