"""The miniature world: determinism, dataset interface, novel concepts, and the shipped models' round trip."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from open_forgetting.core import repo_root
from open_forgetting import miniworld as mw

MINI = repo_root() / 'data' / 'miniworld'
SHIPPED = (MINI / 'manifest.json').is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason='data/miniworld/manifest.json not shipped yet')


def test_world_is_deterministic():
    for split in ('train', 'test'):
        for i in (0, 17):
            a, b = mw.world_item(i, seed=3, split=split), mw.world_item(i, seed=3, split=split)
            assert a == b and a.caption == b.caption
            assert np.array_equal(np.asarray(mw.render(a)), np.asarray(mw.render(b)))
    assert mw.world_item(0, seed=3) != mw.world_item(0, seed=4)
    assert mw.world_item(0, split='train') != mw.world_item(0, split='test')
    img = mw.render(mw.world_item(5))
    assert img.size == (32, 32) and img.mode == 'RGB'


def test_captions_describe_the_rendered_attributes():
    # an image drawn with only one attribute changed differs, and a plain shape has one colour inside it
    it = mw.sample_item(np.random.default_rng(0), shape='square', colour='red', texture='plain', background='black')
    x = np.asarray(mw.render(it)).astype(int)
    centre = x[int(it.cy) - 2:int(it.cy) + 3, int(it.cx) - 2:int(it.cx) + 3].reshape(-1, 3).mean(0)
    assert np.abs(centre - (np.array(mw.COLOURS['red']) + it.jitter)).max() < 12
    assert np.abs(x[0, 0] - np.array(mw.BACKGROUNDS['black'])).max() < 12
    assert it.caption == 'a red plain square on a black background'


@pytest.mark.parametrize('task', list(mw.TASKS))
def test_dataset_interface(task):
    ds = mw.miniworld_dataset(task, 'test', n_per_class=3, seed=1)
    k = len(mw.TASKS[task])
    assert ds.classes == list(mw.TASKS[task]) and len(ds) == 3 * k
    assert np.bincount(ds.labels, minlength=k).tolist() == [3] * k
    for i in range(len(ds)):
        img, label = ds[i]
        assert isinstance(img, Image.Image) and img.size == (32, 32)
        assert ds.classes[label] in ds.captions[i].split()
        assert getattr(ds.items[i], task) == ds.classes[label]
    prompts = mw.miniworld_prompts(task)
    assert list(prompts.columns) == ['prompt', 'classname', 'classidx']
    assert prompts.classname.tolist() == ds.classes and prompts.classidx.tolist() == list(range(k))
    assert all(c in p.split() for p, c in zip(prompts.prompt, prompts.classname))
    # same arguments, same set; another split or seed, other images
    again = mw.miniworld_dataset(task, 'test', n_per_class=3, seed=1)
    assert again.items == ds.items
    assert mw.miniworld_dataset(task, 'val', n_per_class=3, seed=1).items != ds.items


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match='shape'): mw.miniworld_prompts('size')
    with pytest.raises(ValueError, match='heart_emblem'): mw.concept_images('dog')


def test_novel_concepts_absent_from_pretraining(tmp_path):
    novel_words = {c.shape for c in mw.NOVEL_CONCEPTS.values()} | {c.texture for c in mw.NOVEL_CONCEPTS.values()}
    novel_words |= set(mw.IDENTIFIERS)
    assert not novel_words & (set(mw.SHAPES) | set(mw.TEXTURES))
    rng = np.random.default_rng(0)
    words = set()
    for i in range(400):
        it = mw.world_item(i)
        assert it.shape in mw.SHAPES and it.texture in mw.TEXTURES and it.second_colour is None
        words |= set(it.caption.split()) | set(mw.random_caption(it, rng).split())
    assert not words & novel_words
    # ...while the identifiers are whole tokens of the model's vocabulary
    assert set(mw.IDENTIFIERS) <= set(mw.world_vocabulary())
    for name, c in mw.NOVEL_CONCEPTS.items():
        folder = mw.write_concept_folder(name, tmp_path)
        files = sorted(p.name for p in folder.iterdir())
        assert files == ['00.png', '01.png', '02.png', '03.png', '04.png']
        imgs = [np.asarray(Image.open(folder / f)) for f in files]
        assert len({im.tobytes() for im in imgs}) == 5  # varied views
        held = [np.asarray(im) for im in mw.concept_heldout_views(name)]
        assert len(held) == 20 and not {h.tobytes() for h in held} & {im.tobytes() for im in imgs}
        assert c.prompt() == 'a sks shape' and c.class_noun in mw.world_vocabulary()
        rel = mw.related_prompts(name)
        assert all(set(p.split()) <= set(mw.world_vocabulary()) for p in rel)


def test_generic_prompts_are_world_captions():
    ps = mw.generic_prompts(24)
    assert len(set(ps)) == 24 and ps == mw.generic_prompts(24)
    assert all(p and set(p.split()) <= set(mw.world_vocabulary()) - set(mw.IDENTIFIERS) for p in ps)


@needs_shipped
@pytest.mark.parametrize('name', sorted(mw.MINIWORLD_BASES))
def test_shipped_base_round_trip(name):
    "Every shipped base: its manifest entry (fingerprint, reference outputs, size <= 20 MB) and its tokenizer."
    man, folder = json.loads((MINI / 'manifest.json').read_text()), mw.MINIWORLD_BASES[name]
    if folder not in man: pytest.skip(f'data/miniworld/{folder} is not shipped')
    assert man[folder]['bytes'] <= 20e6                 # the budget for a base's weights (decimal MB)
    comps = mw.load_miniworld_base(dtype='fp32', device='cpu', name=name)
    assert comps.fingerprint() == man[folder]['fingerprint']
    assert comps.resolution == 32 and comps.vae_downsample == 2
    ref, got = man[folder]['reference_outputs'], mw.reference_outputs(comps)
    for k in ref:
        assert got[k]['mean_abs'] == pytest.approx(ref[k]['mean_abs'], rel=1e-4, abs=1e-6)
        assert got[k]['head'] == pytest.approx(ref[k]['head'], rel=1e-3, abs=1e-5)
    # the shipped tokenizer is the compact one over the world's vocabulary and spells every caption reversibly. The
    # first base's is exactly what the legacy merges build; the second's (pretrained while the merges came from the
    # `tokenizers` trainer, whose intermediate pieces differ from the hand-written merges) spells each world word whole
    from open_forgetting.models import build_clip_tokenizer
    first = name == 'miniworld'
    fresh = build_clip_tokenizer(mw.world_vocabulary(), model_max_length=comps.tokenizer.model_max_length, chained=first)
    if first: assert comps.tokenizer.get_vocab() == fresh.get_vocab()
    else: assert {w + '</w>' for w in mw.world_vocabulary()} <= set(comps.tokenizer.get_vocab())
    for cap in [mw.world_item(i).caption for i in range(20)] + list(mw.world_vocabulary()):
        ids = comps.tokenizer(cap).input_ids
        if first: assert ids == fresh(cap).input_ids
        else: assert len(ids) == len(cap.split()) + 2
        assert comps.tokenizer.decode(ids, skip_special_tokens=True).strip() == cap


@needs_shipped
def test_shipped_clip_round_trip_and_ranks():
    man = json.loads((MINI / 'manifest.json').read_text())
    clip = mw.load_miniworld_clip(device='cpu')
    assert isinstance(clip.name, str)
    assert clip.fingerprint() == man['clip']['fingerprint']
    ref, got = man['clip']['reference_outputs'], mw.clip_reference_outputs(clip)
    for k in ref:
        assert got[k]['head'] == pytest.approx(ref[k]['head'], rel=1e-3, abs=1e-5)
    # held-out world images: each image's own caption ranks above those of other images far more often than chance
    ds = mw.miniworld_dataset('shape', 'test', n_per_class=2, seed=11)
    x = mw.pil_to_tensor([ds[i][0] for i in range(len(ds))])
    fi = torch.nn.functional.normalize(clip.encode_image(x), dim=-1)
    ft = torch.nn.functional.normalize(clip.encode_text(ds.captions), dim=-1)
    sim = fi @ ft.T
    top1 = (sim.argmax(1) == torch.arange(len(ds))).float().mean().item()
    assert top1 >= 4 / len(ds)  # chance is 1/len(ds)
    # zero-shot shape classification with the task's prompts
    fp = torch.nn.functional.normalize(clip.encode_text(mw.miniworld_prompts('shape').prompt.tolist()), dim=-1)
    acc = ((fi @ fp.T).argmax(1) == torch.tensor(ds.labels)).float().mean().item()
    assert acc >= 3 / len(ds.classes)


def test_manifest_lists_every_shipped_weight_file_with_its_size():
    "The manifest covers the shipped weights (base, clip, the oracle): every listed file exists with its recorded size, and no weight file is unlisted."
    man = json.loads((MINI / 'manifest.json').read_text())
    for name, size in man['files'].items():
        if name.endswith('.md'): continue                       # prose changes size; the weights may not
        assert (MINI / name).stat().st_size == size, name
    shipped = {str(p.relative_to(MINI)) for p in MINI.rglob('*.safetensors')}
    assert shipped <= set(man['files']), shipped - set(man['files'])
    assert 'oracle/model.safetensors' in man['files']
