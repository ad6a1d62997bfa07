"""One test suite for every `World` implementation: the embedded miniature world, and Stable Diffusion on folders this
test writes in the real on-disk formats (a tiny diffusers pipeline folder, STL-10's binary files, a DreamBench-layout
concept folder)."""
import numpy as np
import pytest
import torch
from PIL import Image

from open_forgetting.models import tiny_components, save_components
from open_forgetting.study import load_study, plan_stages, classifier_config, check_cell


def _write_stl10(root, per_class=2, size=96):
    "STL-10's binary layout (stl10_binary/test_X.bin, test_y.bin, class_names.txt) with random images."
    from open_forgetting.data import load_prompts
    folder = root / 'stl10' / 'stl10_binary'; folder.mkdir(parents=True)
    names = list(dict.fromkeys(load_prompts('stl10').sort_values('classidx').classname))
    labels = np.repeat(np.arange(1, len(names) + 1), per_class).astype(np.uint8)
    rng = np.random.default_rng(0)
    rng.integers(0, 256, (len(labels), 3, size, size), dtype=np.uint8).tofile(folder / 'test_X.bin')
    labels.tofile(folder / 'test_y.bin')
    (folder / 'class_names.txt').write_text('\n'.join(names) + '\n')
    for f in ('train_X.bin', 'train_y.bin', 'unlabeled_X.bin'): (folder / f).write_bytes(b'')


def _write_concept(root, name='dog', n=3):
    folder = root / 'dreambench' / name; folder.mkdir(parents=True)
    for i in range(n): Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f'{i:02d}.jpg')
    return folder.parent


@pytest.fixture(scope='module', params=['miniworld', 'stable_diffusion'])
def study(request, tmp_path_factory):
    "A small study of each world, with every folder it names present."
    if request.param == 'miniworld': return load_study('smoke')
    root = tmp_path_factory.mktemp('sd_world')
    save_components(tiny_components(seed=0), root / 'base')
    _write_stl10(root)
    return load_study('sd15', {'model.base': str(root / 'base'), 'model.dtype': 'fp32', 'model.resolution': 32,
                               'classification.root': str(root), 'classification.verify_checksums': False,
                               'classification.datasets': {'stl10': {'n_per_class': 1, 'classifier': {'n_samples': [2, 4]}}},
                               'concepts.root': str(_write_concept(root)), 'appearance.n_generic_prompts': 4})


def test_classification_sets_match_their_prompts_and_size(study):
    for name in study.classification.datasets:
        ds, prompts = study.world.classification_set(study, name)
        assert len(ds) == study.world.n_images(study, name)
        assert set(np.unique([int(ds[i][1]) for i in range(len(ds))])) <= set(prompts.classidx)
        assert len(study.world.classification_prompts(study, name)) == len(prompts)


def test_the_dataset_schedule_wins_over_the_study_and_the_world(study):
    name = next(iter(study.classification.datasets))
    entry = {**study.classification.datasets[name].classifier}
    s2 = load_study(study, {'classification.classifier': {'loss': 'l2'}, f'classification.datasets.{name}.classifier': {**entry, 'loss': 'huber'}})
    assert classifier_config(s2, name).loss == 'huber'
    assert classifier_config(load_study(study, {'classification.classifier': {'loss': 'l2'}}), name).loss == 'l2'


def test_concepts_prompts_and_base_model(study, tmp_path):
    name = study.concepts.names[0]
    spec = study.world.concept(study, name, tmp_path)
    assert spec.name == name and len(list(spec.instance_dir.glob('*'))) >= 2
    generic = study.world.generic_prompts(study)
    assert len(generic) == study.appearance.n_generic_prompts and all(isinstance(p, str) and p for p in generic)
    assert study.world.related_prompts(study, spec)
    assert study.world.n_related_prompts(study) >= 1
    base = study.world.load_base(study.model)
    assert base.fingerprint() == study.world.load_base(study.model).fingerprint()     # the same weights, twice
    with pytest.raises(ValueError, match='no_such_concept'): study.world.check_concept(study, 'no_such_concept')
    with pytest.raises(ValueError, match="concept='../x'"): check_cell(study, None, '../x', 'dreambooth', 'dc')


def test_plan_counts_every_stage(study):
    stages = plan_stages(study).set_index('stage')
    assert (stages.evaluations > 0).all() or stages.loc['class images', 'evaluations'] == 0
    assert {f'classification: {d}' for d in study.classification.datasets} <= set(stages.index)


def test_kid_features_map_images_to_vectors(study):
    if study.world.name != 'miniworld':
        with pytest.raises(ValueError, match='open_clip'): load_study(study, {'appearance.encoder': 'clip'}).world.load_encoder(load_study(study, {'appearance.encoder': 'clip'}))
        return
    enc = study.world.load_encoder(study)
    feats = study.world.kid_features(study, enc)(torch.rand(3, 3, 32, 32))
    assert feats.shape[0] == 3 and feats.ndim == 2
