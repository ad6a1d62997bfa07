"""The miniworld oracle: agreement with the renderer on fresh renders, ground-truth drift of a model against its own
copy, and the prompt parser's round trip on the world's own captions."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from open_forgetting import miniworld as mw
from open_forgetting import oracle as orc
from open_forgetting.core import file_sha256

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def oracle():
    return orc.shipped_oracle()


def _manifest(folder, model, items, prompts):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (it, p) in enumerate(zip(items, prompts)):
        path = folder / f'{i:03d}.png'; mw.render(it).save(path)
        rows.append(dict(model=model, prompt=p, seed=i, path=str(path)))
    return pd.DataFrame(rows)


def test_shipped_oracle_is_small_and_its_recipe_matches(oracle):
    folder = orc.oracle_path()
    weights = folder / 'model.safetensors'
    assert weights.stat().st_size < 2_000_000
    recipe = json.loads((folder / 'recipe.json').read_text())
    assert recipe['sha256'] == file_sha256(weights)
    assert min(recipe['heldout_accuracy'].values()) >= 0.98, recipe['heldout_accuracy']
    assert recipe['model']['classes'] == {a: list(c) for a, c in orc.ORACLE_CLASSES.items()}


def test_oracle_agrees_with_the_renderer_on_fresh_renders(oracle):
    # three sources it never trained on: the world's test split, an unseen seed of the oracle's held-out stream,
    # and the novel concepts' held-out views
    items = [mw.world_item(i, seed=21, split='test') for i in range(300)]
    items += [orc.oracle_item(i, seed=77, stream='heldout') for i in range(300)]
    acc = orc.oracle_accuracy(oracle, orc.render_items(items), orc.item_labels(items))
    assert all(v >= 0.98 for v in acc.values()), acc
    for name, c in mw.NOVEL_CONCEPTS.items():
        reads = orc.read_images(mw.pil_to_tensor(mw.concept_heldout_views(name, 30, seed=3)), oracle)
        assert (reads['shape'] == c.shape).mean() >= 0.98, (name, reads['shape'].value_counts().to_dict())


def test_ground_truth_drift_is_zero_for_a_model_against_itself(oracle, tmp_path):
    items = [mw.world_item(i, seed=31, split='test') for i in range(48)]
    prompts = [it.caption for it in items]
    m = _manifest(tmp_path / 'base', 'base', items, prompts)
    drift = orc.ground_truth_drift(orc.pair_generations(m, m), oracle)
    assert drift['n'].iloc[0] == 48 and (drift[['drift', *orc.ATTRIBUTES]].values == 0).all()
    # a copy in other files gives the same; and swapping every image for another item drifts where labels differ
    copy = _manifest(tmp_path / 'copy', 'copy', items, prompts)
    assert float(orc.ground_truth_drift(orc.pair_generations(m, copy), oracle)['drift'].iloc[0]) == 0.0
    others = [mw.world_item(i, seed=32, split='test') for i in range(48)]
    moved = _manifest(tmp_path / 'moved', 'moved', others, prompts)
    truth = np.mean([any(getattr(a, k) != getattr(b, k) for k in orc.ATTRIBUTES) for a, b in zip(items, others)])
    got = float(orc.ground_truth_drift(orc.pair_generations(m, moved), oracle)['drift'].iloc[0])
    assert abs(got - truth) <= 0.05, (got, truth)


def test_prompt_adherence_and_fidelity_on_renders(oracle, tmp_path):
    items = [mw.world_item(i, seed=41, split='test') for i in range(40)]
    rng = np.random.default_rng(0)
    prompts = [mw.random_caption(it, rng, mw.CaptionConfig(p_empty=0.0)) for it in items]
    good = _manifest(tmp_path / 'good', 'good', items, prompts)
    adh = orc.prompt_adherence(good, oracle)
    assert adh['adherence'].iloc[0] >= 0.95
    concept = mw.NOVEL_CONCEPTS['crescent_emblem']
    views = [concept.item(np.random.default_rng(100 + i)) for i in range(12)]
    cm = _manifest(tmp_path / 'c', 'DB', views, [concept.prompt()] * 12)
    assert float(orc.ground_truth_fidelity(cm, 'crescent_emblem', oracle)['fidelity'].iloc[0]) >= 11 / 12
    assert float(orc.ground_truth_fidelity(cm, 'heart_emblem', oracle)['fidelity'].iloc[0]) <= 1 / 12


def test_prompt_attributes_round_trip_on_the_worlds_captions():
    rng = np.random.default_rng(5)
    for _ in range(500):
        item = mw.sample_item(rng)
        cap = mw.random_caption(item, rng)
        kept = {a: getattr(item, a) for a in orc.ATTRIBUTES if getattr(item, a) in cap.split()}
        assert orc.prompt_attributes(cap) == kept, cap
        assert orc.prompt_attributes(item.caption) == {a: getattr(item, a) for a in orc.ATTRIBUTES}
    for p in mw.generic_prompts(24):
        asked = orc.prompt_attributes(p)
        assert asked and all(v in p.split() for v in asked.values())
    with pytest.raises(ValueError, match="'pink'"):
        orc.prompt_attributes('a pink circle')


def test_confidence_and_unknown_readings(oracle):
    items = [mw.world_item(i, seed=51, split='test') for i in range(200)]
    x = orc.render_items(items)
    reads = orc.read_images(x, oracle)
    conf = reads[[f'{a}_confidence' for a in orc.ATTRIBUTES]]
    assert ((conf > 0) & (conf <= 1)).all().all()
    assert (conf >= 0.9).mean().min() >= 0.97       # renders are read with confidence
    unknown = orc.read_images(x, oracle, min_confidence=1.01)  # no probability exceeds 1
    assert (unknown[list(orc.ATTRIBUTES)] == orc.UNKNOWN).all().all()
    # a uniform grey image shows no shape: its reading is less confident than the renders'
    grey = orc.read_images(torch.full((1, 3, 32, 32), 0.5), oracle)
    assert grey['shape_confidence'].iloc[0] < conf['shape_confidence'].median()
