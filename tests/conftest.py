"""Shared pytest setup: offline hub, a private OPEN_FORGETTING_HOME, and a guard that fails any network access."""
import os, socket, tempfile

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
# one torch thread per test process: pytest-xdist runs one worker per core, and oversubscribed threads make small
# tensor ops 10-100x slower
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ['OPEN_FORGETTING_HOME'] = tempfile.mkdtemp(prefix='open_forgetting_test_home_')

import pytest

_real_connect = socket.socket.connect

def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith('127.') or host in ('localhost', '::1') or self.family == socket.AF_UNIX):
        return _real_connect(self, address)
    raise RuntimeError(f'open_forgetting tests must not touch the network (tried to connect to {address!r}).')

socket.socket.connect = _guarded_connect


# Opt-in slow tests (minutes each: the wheel install, the miniworld science test, ...): marked `@pytest.mark.slow`,
# skipped unless OPEN_FORGETTING_SLOW=1, so `make test` stays fast; `make test-slow` runs them.
SLOW = os.environ.get('OPEN_FORGETTING_SLOW') == '1'

# The longest tests (each starts notebook kernels or a CLI process) go first, so that they do not end the run on one
# worker; `make test` runs xdist's `worksteal` scheduler, whose idle worker takes tests still queued for the other.
FIRST = ('test_study_e2e.py', 'test_notebook_parameters.py', 'test_audit.py', 'test_runner.py')

def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))   # stable
    if SLOW: return
    skip = pytest.mark.skip(reason='slow (minutes): run with `make test-slow` or OPEN_FORGETTING_SLOW=1')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)

@pytest.fixture(scope='session')
def tiny():
    "A tiny SD-architecture model built offline (shared by the session: treat as read-only)."
    from open_forgetting.models import tiny_components
    return tiny_components(seed=0)


@pytest.fixture(scope='module')
def small():
    "An even smaller tiny model (8/16 channels) for loss and training-loop tests (fresh per module: tests may train it)."
    from open_forgetting.models import tiny_components
    return tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4)


def write_images(folder, n=3, size=(40, 48), seed=0):
    "`n` random RGB PNGs in `folder` (created): an instance-image folder for training tests."
    from pathlib import Path
    import numpy as np
    from PIL import Image
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n): Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f'{i:02d}.png')
    return folder


@pytest.fixture(scope='module')
def concept(tmp_path_factory):
    "A three-image toy concept (class noun 'toy'), fresh per module."
    from open_forgetting.train import load_concept
    return load_concept(write_images(tmp_path_factory.mktemp('concept') / 'toy_subject'), class_noun='toy')
