"""Datasets read from fake folders written here in each dataset's real on-disk format; prompt files; subsets; errors."""
import json, pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from open_forgetting.data import (DATASETS, ClassificationDataset, DatasetNotFoundError, as_classification_dataset,
                                  class_names, load_classification_dataset, load_prompts, subset_per_class)

TEMPLATES = {'cifar10': 'a blurry photo of a {}.', 'stl10': 'a photo of a {}.', 'pets': 'a photo of a {}, a type of pet.',
             'flowers': 'a photo of a {}, a type of flower.', 'food': 'a photo of {}, a type of food.',
             'aircraft': 'a photo of a {}, a type of aircraft.', 'objectnet': 'a photo of a {}.', 'imagenet': 'a photo of a {}.'}


def _png(path, color, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, color).save(path)


# ---------- prompt files ----------

@pytest.mark.parametrize('name', sorted(TEMPLATES))
def test_prompt_files_follow_templates(name):
    df = load_prompts(name)
    assert list(df.columns) == ['prompt', 'classname', 'classidx']
    assert list(df.classidx) == list(range(DATASETS[name].n_classes))
    pre, post = TEMPLATES[name].split('{}')
    assert all(p.startswith(pre) and p.endswith(post) for p in df.prompt)


def test_prompt_files_known_entries():
    # a few entries whose wording is not the bare class name (reference protocol's prompts)
    pets = load_prompts('pets').set_index('classname').prompt
    assert pets['american bulldog'] == 'a photo of a American Bulldog, a type of pet.'
    assert pets['bengal'] == 'a photo of a Bengal cat, a type of pet.'
    assert pets['pug'] == 'a photo of a Pug dog, a type of pet.'
    assert load_prompts('aircraft').set_index('classname').prompt['F_A-18'] == 'a photo of a F/A-18, a type of aircraft.'
    assert load_prompts('food').prompt[0] == 'a photo of apple pie, a type of food.'
    assert load_prompts('objectnet').set_index('classname').prompt['full_sized_towel'] == 'a photo of a bath towel.'
    imagenet = load_prompts('imagenet')
    assert imagenet.prompt[0] == 'a photo of a tench.' and imagenet.prompt[999] == 'a photo of a toilet paper.'


def test_prompt_regeneration_script_matches_shipped_files(tmp_path):
    import importlib.util
    script = Path(__file__).resolve().parents[1] / 'data/prompts/make_prompts.py'
    spec = importlib.util.spec_from_file_location('make_prompts', script); mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, rows in mod.all_tables().items():
        out = tmp_path / f'{name}.csv'
        pd.DataFrame(rows, columns=['prompt', 'classname', 'classidx']).to_csv(out, index=False, lineterminator='\n')
        assert out.read_bytes() == (script.parent / f'{name}.csv').read_bytes(), name


def test_load_prompts_errors(tmp_path):
    with pytest.raises(ValueError, match='shipped'): load_prompts('mnist')
    bad = tmp_path / 'bad.csv'; bad.write_text('prompt,classidx\na,0\n')
    with pytest.raises(ValueError, match='classname'): load_prompts(bad)
    with pytest.raises(FileNotFoundError): load_prompts(tmp_path / 'none.csv')


# ---------- fake datasets in their real formats ----------

def fake_cifar10(root, n_test=20):
    folder = root / 'cifar-10-batches-py'; folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batch = lambda n: {'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8), 'labels': [i % 10 for i in range(n)]}
    for i in range(1, 6): pickle.dump(batch(10), open(folder / f'data_batch_{i}', 'wb'))
    pickle.dump(batch(n_test), open(folder / 'test_batch', 'wb'))
    pickle.dump({'label_names': class_names(load_prompts('cifar10'))}, open(folder / 'batches.meta', 'wb'))


def fake_stl10(root, n_test=20):
    folder = root / 'stl10_binary'; folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (('train', 10), ('test', n_test)):
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f'{split}_X.bin')
        (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f'{split}_y.bin')
    (folder / 'unlabeled_X.bin').write_bytes(b'')
    (folder / 'class_names.txt').write_text('\n'.join(class_names(load_prompts('stl10'))))


def fake_pets(root):
    base = root / 'oxford-iiit-pet'
    names = ['Abyssinian', 'american_bulldog', 'yorkshire_terrier']   # file stems as in the archive
    ids = {'Abyssinian': 1, 'american_bulldog': 2, 'yorkshire_terrier': 37}
    lines = []
    for stem in names:
        for k in (1, 2):
            _png(base / 'images' / f'{stem}_{k}.jpg', (k * 50, 0, 0)); lines.append(f'{stem}_{k} {ids[stem]} 1 1')
    (base / 'annotations').mkdir(parents=True)
    (base / 'annotations' / 'test.txt').write_text('\n'.join(lines) + '\n')
    (base / 'annotations' / 'trainval.txt').write_text('\n'.join(lines) + '\n')


def fake_flowers(root):
    from scipy.io import savemat
    base = root / 'flowers-102'
    labels = np.array([1, 2, 102, 1, 50, 102])
    for i in range(len(labels)): _png(base / 'jpg' / f'image_{i + 1:05d}.jpg', (0, i * 30, 0))
    savemat(base / 'imagelabels.mat', {'labels': labels})
    savemat(base / 'setid.mat', {'trnid': np.array([1]), 'valid': np.array([2]), 'tstid': np.array([3, 4, 5, 6])})


def fake_food(root):
    base = root / 'food-101'
    classes = [c for c in load_prompts('food').classname]
    meta = {c: [f'{c}/{k}' for k in range(2)] if c in ('apple_pie', 'waffles') else [] for c in classes}
    for c, items in meta.items():
        for it in items: _png(base / 'images' / f'{it}.jpg', (0, 0, 200))
    (base / 'meta').mkdir(parents=True)
    (base / 'meta' / 'test.json').write_text(json.dumps(meta)); (base / 'meta' / 'train.json').write_text(json.dumps(meta))


def fake_aircraft(root):
    data = root / 'fgvc-aircraft-2013b' / 'data'
    variants = [v for v in load_prompts('aircraft').prompt.str[len('a photo of a '):-len(', a type of aircraft.')]]
    data.mkdir(parents=True); (data / 'variants.txt').write_text('\n'.join(variants) + '\n')
    items = [('1000001', 'F/A-18'), ('1000002', '707-320'), ('1000003', 'Yak-42')]
    for i, _ in items: _png(data / 'images' / f'{i}.jpg', (10, 10, 10), size=(40, 40))
    (data / 'images_variant_test.txt').write_text(''.join(f'{i} {v}\n' for i, v in items))


def fake_objectnet(root, with_images=('alarm_clock', 'wok')):
    images = root / 'objectnet-1.0' / 'images'
    for folder in load_prompts('objectnet').classname: (images / folder).mkdir(parents=True)
    (images / 'not_in_imagenet').mkdir()
    _png(images / 'not_in_imagenet' / 'x.png', (1, 2, 3))
    for folder in with_images:
        for k in range(2):
            img = Image.new('RGB', (12, 12), (255, 0, 0)); img.paste((0, 255, 0), (2, 2, 10, 10))   # 2-px red border
            (images / folder).mkdir(exist_ok=True); img.save(images / folder / f'{k}.png')


def fake_imagenet(root, with_images=(0, 999)):
    val = root / 'val'
    for i in range(1000): (val / f'n{i:08d}').mkdir(parents=True)
    for i in with_images: _png(val / f'n{i:08d}' / 'ILSVRC2012_val_0.JPEG', (i % 256, 0, 0))


def test_cifar10(tmp_path):
    fake_cifar10(tmp_path)
    ds = load_classification_dataset('cifar10', tmp_path, verify_checksums=False, allow_pickle=True)
    assert len(ds) == 20 and ds.classes[0] == 'airplane' and ds[13][1] == 3 and ds[13][0].size == (32, 32)
    train = load_classification_dataset('cifar10', tmp_path, split='train', verify_checksums=False, allow_pickle=True)
    assert len(train) == 50
    with pytest.raises(DatasetNotFoundError, match='cifar-10-batches-py'):   # real checksums do not match the fake
        load_classification_dataset('cifar10', tmp_path)


def test_stl10(tmp_path):
    fake_stl10(tmp_path)
    ds = load_classification_dataset('stl10', tmp_path, verify_checksums=False)
    assert len(ds) == 20 and ds.labels.tolist()[:3] == [0, 1, 2] and ds[0][0].size == (96, 96)


def test_pets(tmp_path):
    fake_pets(tmp_path)
    ds = load_classification_dataset('pets', tmp_path)
    assert ds.labels.tolist() == [0, 0, 1, 1, 36, 36] and ds.classes[36] == 'yorkshire terrier'


def test_flowers(tmp_path):
    fake_flowers(tmp_path)
    ds = load_classification_dataset('flowers', tmp_path, verify_checksums=False)
    assert ds.labels.tolist() == [101, 0, 49, 101] and ds.classes[101] == 'blackberry lily'


def test_food(tmp_path):
    fake_food(tmp_path)
    ds = load_classification_dataset('food', tmp_path)
    assert sorted(ds.labels.tolist()) == [0, 0, 100, 100] and ds.classes[100] == 'waffles'


def test_aircraft(tmp_path):
    fake_aircraft(tmp_path)
    ds = load_classification_dataset('aircraft', tmp_path)
    assert ds.labels.tolist() == [73, 0, 99] and ds.classes[73] == 'F_A-18'


def test_objectnet_reads_113_folders_and_crops_border(tmp_path):
    fake_objectnet(tmp_path)
    ds = load_classification_dataset('objectnet', tmp_path)
    assert ds.labels.tolist() == [0, 0, 112, 112] and len(ds.classes) == 113
    img, _ = ds[0]
    assert img.size == (8, 8) and img.getpixel((0, 0)) == (0, 255, 0)     # red 2-px border cropped like the reference
    # a missing ImageNet-overlap folder is an error naming the layout
    (tmp_path / 'objectnet-1.0' / 'images' / 'wok' / '0.png').unlink(); (tmp_path / 'objectnet-1.0' / 'images' / 'wok' / '1.png').unlink()
    (tmp_path / 'objectnet-1.0' / 'images' / 'wok').rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"wok.*objectnet-1.0/images/<folder>"):
        load_classification_dataset('objectnet', tmp_path)


def test_imagenet_folder(tmp_path):
    fake_imagenet(tmp_path)
    ds = load_classification_dataset('imagenet', tmp_path, split='val')
    assert ds.labels.tolist() == [0, 999] and ds.classes[999] == 'toilet paper'
    (tmp_path / 'val' / 'n00000500').rmdir()
    with pytest.raises(DatasetNotFoundError, match='999 class folders.*1000'):
        load_classification_dataset('imagenet', tmp_path, split='val')


@pytest.mark.parametrize('name', sorted(DATASETS))
def test_missing_or_wrong_folder_names_layout(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match='does not exist'):
        load_classification_dataset(name, tmp_path / 'missing', split=DATASETS[name].splits[0])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetNotFoundError, match='Expected layout'):
        load_classification_dataset(name, tmp_path / 'empty', split=DATASETS[name].splits[0])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='Unknown dataset'): load_classification_dataset('mnist', tmp_path)
    with pytest.raises(ValueError, match='splits'): load_classification_dataset('pets', tmp_path, split='val')
    fake_stl10(tmp_path)
    for bad in ('abc', 0, -1, 1.5, True, None):
        if bad is None: continue                                  # None: the full set
        with pytest.raises(ValueError, match='n_per_class'):
            load_classification_dataset('stl10', tmp_path, n_per_class=bad, verify_checksums=False)
    for bad in ('1', -1, 0.5):
        with pytest.raises(ValueError, match='seed'): load_classification_dataset('stl10', tmp_path, n_per_class=1, seed=bad, verify_checksums=False)
    with pytest.raises(ValueError, match='verify_checksums'): load_classification_dataset('stl10', tmp_path, verify_checksums='no')
    with pytest.raises(ValueError, match='n_per_class'): subset_per_class([0, 1], 'abc')


class _Unpickled(Exception): pass


class _Bomb:
    "Unpickling this object raises: the test's witness that a loader unpickled the file."
    def __reduce__(self): return (_raise, ())


def _raise(): raise _Unpickled('the file was unpickled')


def test_cifar_pickles_need_an_explicit_opt_in(tmp_path):
    fake_cifar10(tmp_path)
    for f in (tmp_path / 'cifar-10-batches-py').iterdir(): pickle.dump(_Bomb(), open(f, 'wb'))
    with pytest.raises(ValueError, match='allow_pickle=True'):       # unverified: refused before any file is opened
        load_classification_dataset('cifar10', tmp_path, verify_checksums=False)
    with pytest.raises(DatasetNotFoundError, match='cifar-10-batches-py'):   # verified: the MD5 check refuses them, unopened
        load_classification_dataset('cifar10', tmp_path)
    with pytest.raises(_Unpickled):                                   # the opt-in does what it says
        load_classification_dataset('cifar10', tmp_path, verify_checksums=False, allow_pickle=True)


def test_identity_covers_split_content_and_labels_not_location(tmp_path):
    fake_cifar10(tmp_path / 'a')
    load = lambda root, split='test', **kw: load_classification_dataset('cifar10', root, split, verify_checksums=False, allow_pickle=True, **kw)
    ident = load(tmp_path / 'a').identity()
    assert load(tmp_path / 'a', 'train').identity() != ident
    assert load(tmp_path / 'a', n_per_class=1, seed=2).identity() == ident         # image ids index the same full set
    import shutil; shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    assert load(tmp_path / 'b').identity() == ident                               # moved: same files
    batch = pickle.load(open(tmp_path / 'b' / 'cifar-10-batches-py' / 'test_batch', 'rb'))
    batch['data'][0, 0] ^= 1; pickle.dump(batch, open(tmp_path / 'b' / 'cifar-10-batches-py' / 'test_batch', 'wb'))
    assert load(tmp_path / 'b').identity() != ident                               # one pixel changed


def test_generic_dataset_identity_from_content():
    from open_forgetting.miniworld import miniworld_dataset
    test, val = as_classification_dataset(miniworld_dataset('shape', 'test', 2)), as_classification_dataset(miniworld_dataset('shape', 'val', 2))
    assert (test.split, val.split) == ('test', 'val') and test.identity() != val.identity()
    assert as_classification_dataset(miniworld_dataset('shape', 'test', 2, seed=1)).identity()['source'] != test.identity()['source']
    assert as_classification_dataset(miniworld_dataset('shape', 'test', 2)).identity() == test.identity()


# ---------- subsets and the generic wrapper ----------

def test_subset_per_class_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(5), 7)
    a, b = subset_per_class(labels, 3, seed=4), subset_per_class(labels, 3, seed=4)
    assert a.tolist() == b.tolist() and np.bincount(labels[a]).tolist() == [3] * 5 and list(a) == sorted(a)
    assert subset_per_class(labels, 3, seed=5).tolist() != a.tolist()
    assert len(subset_per_class(labels, 100)) == 35                       # small classes: all their images
    with pytest.raises(ValueError): subset_per_class(labels, 0)


def test_cifar10_subset_keeps_image_ids(tmp_path):
    fake_cifar10(tmp_path, n_test=50)
    full = load_classification_dataset('cifar10', tmp_path, verify_checksums=False, allow_pickle=True)
    sub = load_classification_dataset('cifar10', tmp_path, n_per_class=2, seed=3, verify_checksums=False, allow_pickle=True)
    assert len(sub) == 20 and np.bincount(sub.labels).tolist() == [2] * 10
    for i in range(len(sub)):
        assert sub[i][1] == full[int(sub.image_ids[i])][1]
        assert np.array_equal(np.asarray(sub[i][0]), np.asarray(full[int(sub.image_ids[i])][0]))


def test_generic_dataset_wrapper():
    import torch
    class Custom(torch.utils.data.Dataset):
        classes = ['a', 'b', 'c']
        def __len__(self): return 9
        def __getitem__(self, i): return torch.zeros(3, 4, 4), i % 3
    ds = as_classification_dataset(Custom())
    assert ds.labels.tolist() == [0, 1, 2] * 3 and as_classification_dataset(ds) is ds
    class NoClasses(torch.utils.data.Dataset):
        def __len__(self): return 1
        def __getitem__(self, i): return torch.zeros(3, 4, 4), 0
    with pytest.raises(TypeError, match='classes'): as_classification_dataset(NoClasses())
    class BadLabels(Custom):
        def __getitem__(self, i): return torch.zeros(3, 4, 4), 5
    with pytest.raises(ValueError, match='labels must lie'): as_classification_dataset(BadLabels())


FAKES = {'stl10': (fake_stl10, 'test', dict(verify_checksums=False)), 'pets': (fake_pets, 'test', {}),
         'flowers': (fake_flowers, 'test', dict(verify_checksums=False)), 'food': (fake_food, 'test', {}),
         'aircraft': (fake_aircraft, 'test', {}), 'objectnet': (fake_objectnet, 'test', {}), 'imagenet': (fake_imagenet, 'val', {})}


@pytest.mark.parametrize('name', sorted(FAKES))
def test_every_dataset_has_an_identity_that_follows_its_image_files(tmp_path, name):
    fake, split, kw = FAKES[name]
    fake(tmp_path / 'a')
    ident = load_classification_dataset(name, tmp_path / 'a', split, **kw).identity()
    assert ident['name'] == name and ident['split'] == split and len(ident['source']) == 16
    import shutil; shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    assert load_classification_dataset(name, tmp_path / 'b', split, **kw).identity() == ident      # moved: same
    from open_forgetting.data import DATASETS, _dataset_files
    moved = load_classification_dataset(name, tmp_path / 'b', split, **kw)
    files = _dataset_files(moved.base, tmp_path / 'b', DATASETS[name])                  # the files this split reads
    victim = files[0] if name != 'stl10' else tmp_path / 'b' / 'stl10_binary' / 'test_X.bin'
    data = bytearray(victim.read_bytes()); data[-1] ^= 1; victim.write_bytes(bytes(data))
    assert load_classification_dataset(name, tmp_path / 'b', split, **kw).identity() != ident      # an image's bytes changed
