"""The frontiers' knobs (`validity.FRONTIERS`) name laboratory configurations of `tools/run_lab.py`: every point must be
a configuration and variant that the laboratory runs, and the knob's value must be the setting that configuration
really trains with (its `--set` override, else the laboratory study's value, else the training default)."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import yaml

from open_forgetting.train import TrainConfig
from open_forgetting.validity import FRONTIERS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def run_lab():
    spec = importlib.util.spec_from_file_location('run_lab', REPO / 'tools' / 'run_lab.py')
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module


def _setting(cfg: dict, key: str, study: dict, defaults: dict):
    "What a configuration trains with for `key` (a study key): its override, else the study file, else TrainConfig's default."
    if key in cfg['set']: return float(cfg['set'][key])
    section, *rest = key.split('.')
    node = study.get(section, {})
    for k in rest: node = node.get(k, {}) if isinstance(node, dict) else {}
    return float(node) if not isinstance(node, dict) else float(defaults[rest[-1]])


KNOB_KEYS = {'fewer steps': 'training.settings.max_steps', 'lower learning rate': 'training.settings.learning_rate',
             'prior-preservation weight': 'training.settings.lambda_pr', 'lower LoRA rank': 'training.settings.lora_rank'}


@pytest.mark.parametrize('method', list(FRONTIERS))
def test_every_frontier_point_is_a_laboratory_configuration_with_that_setting(run_lab, method):
    study = yaml.safe_load(run_lab.STUDY.read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for knob, members in FRONTIERS[method].items():
        for config, variant, value in members:
            assert config in run_lab.CONFIGS, f'{method} / {knob}: {config!r} is not in tools/run_lab.py CONFIGS'
            cfg = run_lab.CONFIGS[config]
            assert variant in cfg['variants'], f'{config!r} does not run the {variant!r} variant'
            assert cfg['methods'] == [method.lower()], (config, cfg['methods'])
            if knob == 'Drift Correction λ':
                expected = _setting(cfg, 'drift_correction.lambda_dc', study, defaults) if variant == 'dc' else 0.0
            else:
                expected = _setting(cfg, KNOB_KEYS[knob], study, defaults)
            assert expected == pytest.approx(value), f'{method} / {knob}: {config!r} trains with {expected}, the frontier says {value}'
