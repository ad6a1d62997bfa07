#!/usr/bin/env python
"""Issue 20's trust probe, with its lists written down: result-changing settings honoured (n/9), damaged-file kinds healed
(n/11), bad inputs with a clear error (n/50).

    OMP_NUM_THREADS=1 .venv/bin/python tools/probe_trust.py [--skip-pytest] [--only settings|damage|inputs]

One line per case, `PASS|FAIL  category  case  -- what happened`, then the three totals. Everything runs on tiny models,
the embedded miniature world and the `smoke` study, in a private OPEN_FORGETTING_HOME (a few minutes on one CPU core).

How each part decides:
- settings: each case changes ONE thing that changes a result and checks, with the package's own key functions
  (`classifier.run_key`, `TrainConfig.key` / `train.run_identity`, `runner.marker_record` / `marker_changes`,
  `Study.fingerprint`) or a short real run, that the cached result is not reused (the key differs, the run is refused
  naming the field, or the cached answer equals an uncached one). Controls (not counted) check that what must not
  matter (batch sizes, device, progress, a moved study or dataset folder, prose in a notebook) keeps the key.
- damage: five kinds are damaged here on tiny runs (classifier .npz, generated PNG, generation manifest.json, runner
  marker, shard status table) and must be set aside with a warning naming the file and recomputed equal to the
  undamaged result; the six training kinds (trained.safetensors, run.json, class-image cache, replay cache, DC teacher
  cache, checkpoint) are the tests of tests/test_train_robust.py, run by node id (a kind passes when all its nodes pass).
- inputs: a case passes when it raises (or the CLI exits 2 with a single line on stderr and no traceback) with a message
  that contains the bad value or the key's name; it fails on silent acceptance, a crash without either, or a traceback.
"""
from __future__ import annotations
import argparse, contextlib, copy, io, json, os, pickle, re, shutil, subprocess, sys, tempfile, traceback, warnings
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_DATASETS_OFFLINE'): os.environ.setdefault(k, '1')
os.environ['OPEN_FORGETTING_HOME'] = tempfile.mkdtemp(prefix='probe_trust_home_')
REPO = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.mkdtemp(prefix='probe_trust_'))

import numpy as np
import pandas as pd
import torch

RESULTS: list[tuple[str, str, bool, str]] = []     # (category, case, passed, what happened)

def report(category: str, case: str, ok: bool, what: str) -> None:
    RESULTS.append((category, case, bool(ok), what))
    print(f"{'PASS' if ok else 'FAIL'}  {category:9} {case}  -- {what}", flush=True)

def run_case(category: str, case: str, fn) -> None:
    "fn() -> (ok, what); an exception inside the probe's own check is a FAIL that says so."
    try: ok, what = fn()
    except Exception as e: ok, what = False, f'probe raised {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
    report(category, case, ok, what)

def _one_line(text: str, n: int = 160) -> str:
    text = ' '.join(str(text).split()); return text if len(text) <= n else text[:n - 3] + '...'

# ---------------------------------------------------------------- shared tiny inputs
def _fake_cifar10(root: Path, pixel: int = 0) -> Path:
    "A CIFAR-10-layout folder with 20 images per batch (pickles we wrote ourselves); `pixel` changes one byte of the test batch."
    from open_forgetting.data import class_names, load_prompts
    folder = root / 'cifar-10-batches-py'; folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for f in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        if f == 'test_batch': data[0, 0] = pixel
        with open(folder / f, 'wb') as fh: pickle.dump({'data': data, 'labels': [i % 10 for i in range(20)]}, fh)
    with open(folder / 'batches.meta', 'wb') as fh: pickle.dump({'label_names': class_names(load_prompts('cifar10'))}, fh)
    return root

def _cifar(root):
    from open_forgetting.data import load_classification_dataset
    return load_classification_dataset('cifar10', root, verify_checksums=False, allow_pickle=True)

def _key(ds, prompts=None, config=None, seed=0, fp='fp'):
    from open_forgetting.classifier import run_key, ClassifierConfig
    from open_forgetting.data import as_classification_dataset
    from open_forgetting.miniworld import miniworld_prompts
    prompts = miniworld_prompts('shape') if prompts is None else prompts
    return run_key(fp, prompts, as_classification_dataset(ds), config or ClassifierConfig(to_keep=(1,), n_samples=(4,)), seed, 'epsilon', 32)

_SMALL = {}
def small():
    if 'm' not in _SMALL:
        from open_forgetting.models import tiny_components
        _SMALL['m'] = tiny_components(seed=0, channels=(8, 16), text_dim=16, norm_num_groups=4)
    return _SMALL['m']

def toy_concept():
    from PIL import Image
    from open_forgetting.train import load_concept
    folder = TMP / 'concept' / 'toy_subject'
    if not folder.exists():
        folder.mkdir(parents=True); rng = np.random.default_rng(0)
        for i in range(3): Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f'{i:02d}.png')
    return load_concept(folder, class_noun='toy')

def prompt_file(text='a photo of\na blurry photo of\n', name='pool.txt'):
    p = TMP / name; p.write_text(text); return str(p)

def tcfg(method='lora', variant='dc', **kw):
    from open_forgetting.train import variant_config
    base = dict(max_steps=2, num_class_images=2, class_sampling_steps=2, dc_n_reg=2, progress=False, learning_rate=1e-3,
                dc_prompt_file=prompt_file())
    base.update(kw)
    return variant_config(method, variant, **base)

def fake_notebooks() -> Path:
    import nbformat
    d = TMP / 'nbs'
    if d.exists(): return d
    d.mkdir()
    for name, body in (('customize', "print('train')"), ('color', "print('color')")):
        nb = nbformat.v4.new_notebook()
        p = nbformat.v4.new_code_cell("concept = 'x'\nmethod = 'dreambooth'\nvariant = 'plain'\nrun_dir = ''\nout_dir = ''\n"
                                      "study = 'smoke'\noverrides = {}")
        p.metadata['tags'] = ['parameters']
        nb.cells = [nbformat.v4.new_markdown_cell('prose'), p, nbformat.v4.new_code_cell(body)]
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nbformat.write(nb, d / f'{name}.ipynb')
    return d

def fake_execute(inp, out, parameters, cwd=None, **kw):
    "Stands in for papermill: writes the executed copy and a result that depends on the parameters."
    Path(out).write_text('{}')
    Path(out).with_name('result.json').write_text(json.dumps(parameters, default=str, sort_keys=True))

def stored(record: dict) -> dict:
    "`record` as a finished job's marker holds it: written with `runner.write_marker`, read back with `read_marker`."
    from open_forgetting.runner import write_marker, read_marker
    path = TMP / 'markers' / f'{len(list((TMP / "markers").glob("*"))) if (TMP / "markers").exists() else 0}.json'
    path.parent.mkdir(exist_ok=True)
    return read_marker(write_marker(path, record))

def _warned(w, name: str) -> bool: return any(name in str(x.message) and 'damaged' in str(x.message) for x in w)

# ================================================================ 1. result-changing settings (9) + controls
def settings_cases():
    from open_forgetting.classifier import ClassifierConfig, classify, run_key
    from open_forgetting.miniworld import miniworld_dataset, miniworld_prompts, load_miniworld_base
    from open_forgetting.data import load_prompts, as_classification_dataset
    from open_forgetting.train import TrainConfig, customize, Trainer, run_identity, identity_diff
    from open_forgetting.runner import plan_jobs, marker_record, marker_changes, experiments_dir
    S = 'setting'

    def split():
        a, b = (_key(miniworld_dataset('shape', s, n_per_class=1)) for s in ('test', 'val'))
        return a != b, f'classifier key test={a[:8]} val={b[:8]}'
    run_case(S, 'dataset split test -> val', split)

    def root_content():
        r1, r2 = _fake_cifar10(TMP / 'cifar_a', pixel=0), _fake_cifar10(TMP / 'cifar_b', pixel=1)
        a, b = _key(_cifar(r1), load_prompts('cifar10')), _key(_cifar(r2), load_prompts('cifar10'))
        return a != b, f'one pixel of test_batch changed: key {a[:8]} -> {b[:8]}'
    run_case(S, 'dataset root content (one byte of one image)', root_content)

    def subset():
        base, prompts = load_miniworld_base(), miniworld_prompts('shape')
        cfg = ClassifierConfig(to_keep=(1,), n_samples=(2,), batch_size=64)
        one = classify(base, miniworld_dataset('shape', 'test', n_per_class=1), prompts, cfg, progress=False)
        ds2 = miniworld_dataset('shape', 'test', n_per_class=2)
        two, fresh = (classify(base, ds2, prompts, cfg, cache=c, progress=False) for c in (True, False))
        ok = (len(two) == 2 * len(one) and two.image_id.tolist() == [int(i) for i in as_classification_dataset(ds2).image_ids]
              and np.array_equal(np.stack(two.scores), np.stack(fresh.scores)))
        return ok, f'n_per_class 1 -> 2: {len(one)} -> {len(two)} rows, cached scores equal an uncached run: {ok}'
    run_case(S, 'n_per_class subset 1 -> 2 (and its seed)', lambda: (lambda r, s: (r[0] and s[0], r[1] + '; ' + s[1]))(
        subset(), (lambda a, b: (a != b, f'subset seed 0 -> 5: key {a[:8]} -> {b[:8]}'))(
            _key(miniworld_dataset('shape', 'test', n_per_class=1)), _key(miniworld_dataset('shape', 'test', n_per_class=1, seed=5)))))

    def prompt_content():
        p = TMP / 'prompts.csv'
        df = miniworld_prompts('shape'); df.to_csv(p, index=False); a = _key(miniworld_dataset('shape', 'test', n_per_class=1), load_prompts(p))
        df.loc[0, 'prompt'] = df.loc[0, 'prompt'] + ' shape'; df.to_csv(p, index=False)
        b = _key(miniworld_dataset('shape', 'test', n_per_class=1), load_prompts(p))
        return a != b, f'{p.name} edited in place (same path): key {a[:8]} -> {b[:8]}'
    run_case(S, 'classifier prompt file content', prompt_content)

    def training_setting():
        base, concept = small(), toy_concept()
        out = TMP / 'train_refuse'
        customize(base, concept, tcfg('lora', 'plain', max_steps=2), out)
        try: customize(base, concept, tcfg('lora', 'plain', max_steps=3), out); return False, 'max_steps 2 -> 3 reused the finished run'
        except FileExistsError as e: named = 'max_steps' in str(e)
        lr = tcfg(learning_rate=1e-3).key() != tcfg(learning_rate=2e-3).key()
        return named and lr, f'max_steps 2 -> 3 refused naming max_steps: {named}; learning_rate 1e-3 -> 2e-3 changes the key: {lr}'
    run_case(S, 'training setting (max_steps, learning_rate)', training_setting)

    def dc_prompt_file():
        path = prompt_file('a photo of\n', 'dc.txt'); a = tcfg(dc_prompts='generic', dc_prompt_file=path).key()
        Path(path).write_text('a photo of\na drawing of\n'); b = tcfg(dc_prompts='generic', dc_prompt_file=path).key()
        return a != b, f'same path, new content: train key {a[:8]} -> {b[:8]}'
    run_case(S, 'DC prompt-file content', dc_prompt_file)

    def schedule():
        ds = miniworld_dataset('shape', 'test', n_per_class=1)
        a, b = _key(ds, config=ClassifierConfig(to_keep=(1,), n_samples=(4,))), _key(ds, config=ClassifierConfig(to_keep=(1,), n_samples=(8,)))
        c = _key(ds, config=ClassifierConfig(to_keep=(1,), n_samples=(4,), loss='l2'))
        return len({a, b, c}) == 3, f'n_samples 4 -> 8 and loss l1 -> l2 give three keys: {len({a, b, c}) == 3}'
    run_case(S, 'classifier schedule (n_samples, loss)', schedule)

    def edited_notebook_marker_changes(folder, which, addition):
        "A copy of color.ipynb: its runner marker, then the first cell `which` selects gets `addition`; the marker's changes."
        d = TMP / folder; d.mkdir(exist_ok=True)
        nb = d / 'color.ipynb'; shutil.copy(experiments_dir() / 'color.ipynb', nb)
        job = plan_jobs(['heart_emblem'], ['dreambooth'], ['dc'], ['color'], parameters={'study': 'smoke', 'overrides': {}})[1]
        run = TMP / 'run_nb'; old = stored(marker_record(job, run, job.all_parameters(run), nb))
        cells = json.loads(nb.read_text()); cell = next(c for c in cells['cells'] if which(c))
        cell['source'] = ''.join(cell['source']) + addition; nb.write_text(json.dumps(cells))
        return marker_changes(old, marker_record(job, run, job.all_parameters(run), nb))

    def notebook_code():
        changes = edited_notebook_marker_changes('nb_code', lambda c: c['cell_type'] == 'code' and 'parameters' not in c['metadata'].get('tags', []),
                                                 '\n# edited')
        return any('notebook' in c for c in changes), f'a code cell edited: marker changes {changes}'
    run_case(S, "notebook's code (runner marker)", notebook_code)

    def study_content():
        from open_forgetting.cli import build_parser, study_from_args, study_jobs
        from open_forgetting.study import shipped_studies
        f = TMP / 'study_a' / 's.yaml'; f.parent.mkdir(exist_ok=True); shutil.copy(shipped_studies()['smoke'], f)
        def record(path):
            args = build_parser().parse_args(['run', '--study', str(path), '--concepts', 'heart_emblem', '--variants', 'dc'])
            job = study_jobs(args, study_from_args(args), ['color'])[1]; run = TMP / 'run_study'
            return marker_record(job, run, job.all_parameters(run), experiments_dir() / 'color.ipynb')
        old = stored(record(f))
        f.write_text(f.read_text().replace('paired: [0, 1]', 'paired: [0, 2]'))
        changes = marker_changes(old, record(f))
        return any(c.startswith('identity.study') for c in changes), f'seeds.paired edited in the file: marker changes {[_one_line(c, 60) for c in changes]}'
    run_case(S, "study file's content (runner marker)", study_content)

    # ---- controls: must NOT change the key (reported, not counted in n/9)
    C = 'control'
    def classifier_speed_settings():
        ds = miniworld_dataset('shape', 'test', n_per_class=1)
        keys = {_key(ds, config=ClassifierConfig(to_keep=(1,), n_samples=(4,), **kw)) for kw in
                ({}, dict(batch_size=3), dict(images_per_batch=2), dict(device='cpu'), dict(compile=True), dict(share_prefix=False), dict(channels_last=True))}
        return len(keys) == 1, f'batch_size, images_per_batch, device, compile, share_prefix, channels_last: {len(keys)} distinct key(s)'
    run_case(C, 'classifier batch size / device / speed options keep the key', classifier_speed_settings)

    def train_engineering():
        keys = {tcfg(**kw).key() for kw in ({}, dict(progress=True), dict(device='cpu'), dict(checkpoint_every=1),
                                            dict(keep_checkpoints=3), dict(gradient_checkpointing=True))}
        base, concept = small(), toy_concept(); out = TMP / 'train_refuse'
        real = Trainer.run; Trainer.run = lambda self: (_ for _ in ()).throw(AssertionError('trained again'))
        try: same = customize(base, concept, tcfg('lora', 'plain', max_steps=2, progress=True, device='cpu', checkpoint_every=1), out) == out
        except AssertionError: same = False
        finally: Trainer.run = real
        return len(keys) == 1 and same, f'progress, device, checkpoints, gradient checkpointing: {len(keys)} key(s); finished run reused: {same}'
    run_case(C, 'training progress / device / checkpoints keep the key', train_engineering)

    def moved_dataset():
        r1 = _fake_cifar10(TMP / 'cifar_a', pixel=0); r2 = TMP / 'cifar_moved'; shutil.copytree(r1, r2, dirs_exist_ok=True)
        a, b = _key(_cifar(r1), load_prompts('cifar10')), _key(_cifar(r2), load_prompts('cifar10'))
        return a == b, f'the same dataset in another folder: key {a[:8]} == {b[:8]}'
    run_case(C, 'a dataset folder copied elsewhere keeps the key', moved_dataset)

    def moved_study():
        from open_forgetting.cli import build_parser, study_from_args, study_jobs
        from open_forgetting.study import shipped_studies
        recs = []
        for sub in ('study_x', 'study_y'):
            f = TMP / sub / 's.yaml'; f.parent.mkdir(exist_ok=True); shutil.copy(shipped_studies()['smoke'], f)
            args = build_parser().parse_args(['run', '--study', str(f), '--concepts', 'heart_emblem', '--variants', 'dc'])
            job = study_jobs(args, study_from_args(args), ['color'])[1]; run = TMP / f'run_{sub}'
            recs.append(marker_record(job, run, job.all_parameters(run), experiments_dir() / 'color.ipynb'))
        changes = marker_changes(stored(recs[0]), recs[1])
        return changes == [], f'the same study file in another folder and run folder moved: changes {changes}'
    run_case(C, 'a study moved to another path keeps the marker', moved_study)

    def prose_only():
        changes = edited_notebook_marker_changes('nb_prose', lambda c: c['cell_type'] == 'markdown', '\nMore prose.')
        return changes == [], f'a markdown cell edited: changes {changes}'
    run_case(C, "a notebook's prose keeps the marker", prose_only)

# ================================================================ 2. damaged-file kinds (11)
TRAINING_NODES = {
    'trained.safetensors': ['tests/test_train_robust.py::test_damaged_trained_weights_are_set_aside_and_retrained'],
    'training run.json': ['tests/test_train_robust.py::test_unreadable_run_json_is_set_aside_and_the_run_retrained'],
    'class-image cache': ['tests/test_train_robust.py::test_damaged_class_image_cache_is_recomputed'],
    'replay cache': ['tests/test_train_robust.py::test_damaged_replay_set_is_recomputed'],
    'DC teacher cache': ['tests/test_train_robust.py::test_teacher_pool_is_reused_across_methods_and_variants_and_healed_when_damaged'],
    'training checkpoint': ['tests/test_train_robust.py::test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_resumed'],
}

def _truncate(p: Path): p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
def _flip(p: Path, at: float = 0.5):
    b = bytearray(p.read_bytes()); b[int(len(b) * at)] ^= 0xFF; p.write_bytes(bytes(b))

def damage_cases(skip_pytest: bool):
    from open_forgetting.classifier import ClassifierConfig, classify
    from open_forgetting.core import cache_dir
    from open_forgetting.miniworld import miniworld_dataset, miniworld_prompts, load_miniworld_base
    from open_forgetting.generate import generate, GenerationSettings, load_images
    from open_forgetting.runner import plan_jobs, run_jobs, shard_jobs, merge_job_tables
    D = 'damage'

    def npz():
        base = load_miniworld_base()
        cfg = ClassifierConfig(to_keep=(1,), n_samples=(3,), batch_size=64)
        ds = miniworld_dataset('colour', 'test', n_per_class=1)
        prompts = miniworld_prompts('colour')
        clean = classify(base, ds, prompts, cfg, progress=False)
        folder = cache_dir('classifier', clean.attrs['cache_key']); files = sorted(folder.glob('*.npz'))
        _truncate(files[0]); _flip(files[1])
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            again = classify(base, ds, prompts, cfg, progress=False)
        a, b = np.stack(clean.scores), np.stack(again.scores)
        # the two recomputed images share UNet batches with each other instead of the original group's images: float
        # reassociation (~1e-8), the tolerance 03_classifier documents for image groups; predictions must be identical
        same = np.allclose(a, b, rtol=1e-5, atol=1e-6) and again.pred.tolist() == clean.pred.tolist()
        named = _warned(w, files[0].name) and _warned(w, files[1].name)
        aside = len(list(folder.glob('*.npz.damaged-*'))) == 2
        return same and named and aside, (f'truncated + bit-flipped: warned naming them {named}, set aside {aside}, rerun equals clean '
                                          f'{same} (same predictions, scores within {np.abs(a - b).max():.1e})')
    run_case(D, 'classifier .npz', npz)

    settings = GenerationSettings(steps=2, batch_size=4)
    def png():
        m = generate(small(), ['a photo of', 'a drawing of'], [0, 1], settings, root=TMP / 'gen_png', progress=False)
        clean = load_images(m.path); a, b = Path(m.path[1]), Path(m.path[2]); _truncate(a); _flip(b, 0.6)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            m2 = generate(small(), ['a photo of', 'a drawing of'], [0, 1], settings, root=TMP / 'gen_png', progress=False)
        same = torch.equal(load_images(m2.path), clean); named = _warned(w, a.name) and _warned(w, b.name)
        return same and named, f'truncated + bit-flipped PNG: warned naming them {named}, regenerated identical {same}'
    run_case(D, 'generated PNG', png)

    def manifest():
        m = generate(small(), ['a photo of'], [0, 1], settings, root=TMP / 'gen_man', progress=False)
        clean = load_images(m.path); mp = Path(m.path[0]).parent / 'manifest.json'
        mp.write_text(mp.read_text()[:25])
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            m2 = generate(small(), ['a photo of'], [0, 1], settings, root=TMP / 'gen_man', progress=False)
        man = json.loads(mp.read_text()); rebuilt = len(man.get('images', {})) == 2
        same = torch.equal(load_images(m2.path), clean); named = _warned(w, 'manifest.json')
        return same and named and rebuilt, f'truncated manifest.json: warned {named}, rebuilt from the files ({len(man.get("images", {}))} entries) {rebuilt}, images equal {same}'
    run_case(D, 'generation manifest.json', manifest)

    def marker():
        nbs, run = fake_notebooks(), TMP / 'run_marker'
        jobs = plan_jobs(['a', 'b'], ['dreambooth'], ['dc'], ['color'], parameters={'study': 'smoke', 'overrides': {}})
        run_jobs(jobs, run, nbs, execute=fake_execute, progress=False)
        mk = run / 'a/dreambooth-dc/color/_SUCCESS.json'; sound = json.loads(mk.read_text()); _flip(mk, 0.3)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            st = run_jobs(jobs, run, nbs, execute=fake_execute, progress=False).set_index('key').status
        again = json.loads(mk.read_text()); named = _warned(w, '_SUCCESS.json')
        ok = st['a/dreambooth-dc/color'] == 'done' and (st == 'skipped (done)').sum() == 3 and \
             all(again[k] == sound[k] for k in ('key', 'parameters', 'notebook', 'identity'))
        return ok and named, f'bit-flipped _SUCCESS.json: warned {named}; its job reran, the other 3 skipped, new marker equals the old: {ok}'
    run_case(D, 'runner marker _SUCCESS.json', marker)

    def shard_table():
        nbs, run = fake_notebooks(), TMP / 'run_table'
        jobs = plan_jobs(['a', 'b'], ['dreambooth'], ['dc'], ['color'], parameters={'study': 'smoke', 'overrides': {}})
        for i in (0, 1): run_jobs(shard_jobs(jobs, i, 2), run, nbs, execute=fake_execute, progress=False, shard=(i, 2))
        clean = merge_job_tables(run)[['key', 'status']]
        t = run / 'jobs-1of2.csv'; t.write_bytes(b'\xff\xfe' + bytes(range(256)) * 4)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            with contextlib.suppress(FileNotFoundError): merge_job_tables(run)
        named = _warned(w, 'jobs-1of2.csv')
        run_jobs(shard_jobs(jobs, 0, 2), run, nbs, execute=fake_execute, progress=False, shard=(0, 2))
        healed = merge_job_tables(run)[['key', 'status']].replace('skipped (done)', 'done')
        same = healed.equals(clean.replace('skipped (done)', 'done'))
        return named and same, f'garbage jobs-1of2.csv: warned naming it {named}; after the shard reran the merged table equals the clean one {same}'
    run_case(D, 'shard status table jobs-<i>of<N>.csv', shard_table)

    if skip_pytest:
        for kind in TRAINING_NODES: report(D, kind, False, 'not run (--skip-pytest)')
        return
    nodes = [n for ns in TRAINING_NODES.values() for n in ns]
    xml = TMP / 'junit.xml'
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', f'--junitxml={xml}', *nodes],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    import xml.etree.ElementTree as ET
    cases = {}
    if xml.exists():
        for tc in ET.parse(xml).getroot().iter('testcase'):
            name = f"{tc.get('classname', '').replace('.', '/')}.py::{tc.get('name')}"
            bad = any(ch.tag in ('failure', 'error', 'skipped') for ch in tc)
            cases[name] = not bad
    for kind, ns in TRAINING_NODES.items():
        mine = {n: ok for n, ok in cases.items() if any(n.split('[')[0] == x for x in ns)}
        ok = bool(mine) and all(mine.values())
        report(D, kind, ok, f'pytest {", ".join(x.split("::")[1] for x in ns)}: {sum(mine.values())}/{len(mine)} passed'
               + ('' if mine else f' (pytest rc {proc.returncode}: {_one_line(proc.stdout[-300:])})'))

# ================================================================ 3. bad inputs (50)
_ECHO = re.compile(r" with overrides \{.*?\}: ")

def _without_echo(msg: str) -> str:
    "A study error's message without its echo of the overrides (which names every key and value, whatever the problem)."
    return _ECHO.sub(': ', msg)

def _expect_error(fn, *needles):
    "PASS when fn() raises an exception whose message (without the echoed overrides) contains one of `needles` (the bad value's repr or the key's name)."
    try: fn()
    except Exception as e:
        msg = _without_echo(str(e))
        hit = [n for n in needles if n in msg]
        return bool(hit), f'{type(e).__name__}: {_one_line(msg)}' + ('' if hit else f'  [names none of {list(needles)}]')
    return False, 'accepted silently'

def _expect_cli(argv, *needles):
    "PASS when `open_forgetting.cli.main(argv)` exits 2 with one stderr line, no traceback, naming the value or key."
    from open_forgetting.cli import main
    err, out = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try: code = main(argv)
        except SystemExit as e: code = e.code
        except Exception as e: return False, f'uncaught {type(e).__name__}: {_one_line(e)}'
    lines = [l for l in err.getvalue().splitlines() if l.strip()]
    last = lines[-1] if lines else ''
    hit = [n for n in needles if n in _without_echo(err.getvalue())]
    ok = code == 2 and 'Traceback' not in err.getvalue() and bool(hit) and len(lines) == 1
    return ok, f'exit {code}, {len(lines)} stderr line(s): {_one_line(last)}' + ('' if hit else f'  [names none of {list(needles)}]')

def input_cases():
    from open_forgetting.classifier import ClassifierConfig, classify, schedule_for
    from open_forgetting.train import TrainConfig, variant_config
    from open_forgetting.generate import GenerationSettings
    from open_forgetting.study import load_study, check_cell, RunLayout
    from open_forgetting.runner import plan_jobs
    from open_forgetting.data import load_classification_dataset
    from open_forgetting.models import load_components
    from open_forgetting.miniworld import miniworld_dataset
    I = 'input'
    root = _fake_cifar10(TMP / 'cifar_inputs')
    ckpt = TMP / 'model.ckpt'; ckpt.write_bytes(b'not opened')
    binf = TMP / 'pytorch_model.bin'; binf.write_bytes(b'not opened')
    listy = TMP / 'list.yaml'; listy.write_text('- a\n- b\n')
    run = str(TMP / 'cli_run')
    tiny_ds = miniworld_dataset('shape', 'test', n_per_class=1)
    cases = [
        # ClassifierConfig and classify (10)
        ("ClassifierConfig(loss='l3')", lambda: ClassifierConfig(loss='l3'), "'l3'", 'loss'),
        ('ClassifierConfig(to_keep=(5, 2), n_samples=(10, 20))', lambda: ClassifierConfig(to_keep=(5, 2), n_samples=(10, 20)), '(5, 2)', 'to_keep'),
        ("ClassifierConfig(to_keep=(1,), n_samples=('a',))", lambda: ClassifierConfig(to_keep=(1,), n_samples=('a',)), "'a'", 'n_samples'),
        ("ClassifierConfig(batch_size='8')", lambda: ClassifierConfig(batch_size='8'), "'8'", 'batch_size'),
        ("ClassifierConfig(images_per_batch='4')", lambda: ClassifierConfig(images_per_batch='4'), "'4'", 'images_per_batch'),
        ("ClassifierConfig(interpolation='nearest')", lambda: ClassifierConfig(interpolation='nearest'), "'nearest'", 'interpolation'),
        ("schedule_for('cifar11')", lambda: schedule_for('cifar11'), "'cifar11'"),
        ('classify(..., seed=-1)', lambda: classify(small(), tiny_ds, None, ClassifierConfig(to_keep=(1,), n_samples=(2,)), seed=-1, progress=False), 'seed'),
        ("classify(..., config={'loss': 'l1'})", lambda: classify(small(), tiny_ds, None, {'loss': 'l1'}, progress=False), 'config'),
        # TrainConfig (11)
        ("TrainConfig(learning_rate='1e-4')", lambda: TrainConfig(learning_rate='1e-4'), 'learning_rate'),
        ('TrainConfig(max_steps=-1)', lambda: TrainConfig(max_steps=-1), 'max_steps'),
        ('TrainConfig(max_steps=2.5)', lambda: TrainConfig(max_steps=2.5), 'max_steps'),
        ("TrainConfig(variant='dc', lambda_dc='abc')", lambda: TrainConfig(variant='dc', lambda_dc='abc'), 'lambda_dc'),
        ("TrainConfig(variant='dc', lambda_dc=-1.0)", lambda: TrainConfig(variant='dc', lambda_dc=-1.0), 'lambda_dc'),
        ("TrainConfig(variant='plain', lambda_dc=1.0)", lambda: TrainConfig(variant='plain', lambda_dc=1.0), 'lambda_dc'),
        ("TrainConfig(variant='dcpr')", lambda: TrainConfig(variant='dcpr'), "'dcpr'"),
        ("TrainConfig(variant='dc', lambda_dc=1, dc_latents='pool')", lambda: TrainConfig(variant='dc', lambda_dc=1, dc_latents='pool'), "'pool'", 'dc_latents'),
        ("TrainConfig(learning_rate=float('nan'))", lambda: TrainConfig(learning_rate=float('nan')), 'learning_rate'),
        ("variant_config('dreambooth', 'dc', max_stpes=2)", lambda: variant_config('dreambooth', 'dc', max_stpes=2), 'max_stpes'),
        ("TrainConfig(variant='dc', lambda_dc=1, dc_prompt_file='/no/such.txt').key()",
         lambda: TrainConfig(variant='dc', lambda_dc=1, dc_prompt_file='/no/such.txt').key(), '/no/such.txt'),
        # GenerationSettings (3)
        ("GenerationSettings(scheduler='ddpm')", lambda: GenerationSettings(scheduler='ddpm'), "'ddpm'"),
        ("GenerationSettings(steps='25')", lambda: GenerationSettings(steps='25'), 'steps'),
        # load_study overrides, dotted keys and types (10)
        ("load_study('smoke', {'drift_correction.lambda_dc': 'abc'})", lambda: load_study('smoke', {'drift_correction.lambda_dc': 'abc'}), "'abc'"),
        ("load_study('smoke', {'drift_correction.lambda_dc': -1})", lambda: load_study('smoke', {'drift_correction.lambda_dc': -1}), 'lambda_dc'),
        ("load_study('smoke', {'classification.n_per_class': 'abc'})", lambda: load_study('smoke', {'classification.n_per_class': 'abc'}), "'abc'"),
        ("load_study('smoke', {'training.settings.learning_rate': 'fast'})", lambda: load_study('smoke', {'training.settings.learning_rate': 'fast'}), "'fast'"),
        ("load_study('smoke', {'training.settings.max_stpes': 2})", lambda: load_study('smoke', {'training.settings.max_stpes': 2}), 'max_stpes'),
        ("load_study('smoke', {'classifcation.n_per_class': 2})", lambda: load_study('smoke', {'classifcation.n_per_class': 2}), 'classifcation'),
        ("load_study('smoke', {'seeds.paired.x': 1})", lambda: load_study('smoke', {'seeds.paired.x': 1}), 'seeds.paired'),
        ("load_study('smoke', {'seeds.control': [0]})", lambda: load_study('smoke', {'seeds.control': [0]}), 'seeds.control'),
        ("load_study('smoke', {'classification.classifier.loss': 'l3'})", lambda: load_study('smoke', {'classification.classifier.loss': 'l3'}), "'l3'"),
        ("load_study('smoke', {'training.methods': ['dreamboth']})", lambda: load_study('smoke', {'training.methods': ['dreamboth']}), 'dreamboth'),
        # names and paths (6)
        ("load_study('smoke', {'concepts.names': ['../../x']})", lambda: load_study('smoke', {'concepts.names': ['../../x']}), '../../x'),
        ("check_cell('smoke', None, '/abs/path', 'dreambooth', 'dc')", lambda: check_cell('smoke', None, '/abs/path', 'dreambooth', 'dc'), '/abs/path'),
        ("plan_jobs(['a/b'], ['dreambooth'], ['dc'])", lambda: plan_jobs(['a/b'], ['dreambooth'], ['dc']), 'a/b'),
        ("load_study('no_such_study')", lambda: load_study('no_such_study'), 'no_such_study'),
        (f"load_study('{listy.name}') (a YAML list)", lambda: load_study(listy), listy.name),
        # datasets and weights (7)
        ("load_classification_dataset('cifar11', root)", lambda: load_classification_dataset('cifar11', root), "'cifar11'"),
        ("load_classification_dataset('cifar10', '/no/such/folder')", lambda: load_classification_dataset('cifar10', '/no/such/folder'), '/no/such/folder'),
        ("load_classification_dataset('cifar10', root, split='val')", lambda: load_classification_dataset('cifar10', root, split='val'), "'val'"),
        ("load_classification_dataset('cifar10', root, n_per_class='abc')", lambda: load_classification_dataset('cifar10', root, n_per_class='abc'), 'n_per_class'),
        ("load_classification_dataset('cifar10', root, verify_checksums=False)", lambda: load_classification_dataset('cifar10', root, verify_checksums=False), 'allow_pickle'),
        ("load_components('model.ckpt')", lambda: load_components(str(ckpt)), 'model.ckpt'),
        ("load_components('pytorch_model.bin')", lambda: load_components(str(binf)), 'pytorch_model.bin'),
        ("load_components('/no/such/model')", lambda: load_components('/no/such/model'), '/no/such/model'),
    ]
    for name, fn, *needles in cases: run_case(I, name, lambda fn=fn, needles=needles: _expect_error(fn, *needles))
    cli = [  # CLI: exit code 2, one line, no traceback, before any kernel starts (3 + the missing-folder case)
        (['run', '--study', 'smoke', '--set', 'drift_correction.lambda_dc=abc', '--run-dir', run], "'abc'"),
        (['run', '--study', 'smoke', '--concepts', '../../x', '--run-dir', run], '../../x'),
        (['run', '--study', 'smoke', '--set', 'max_steps', '--run-dir', run], "'max_steps'"),
        (['run', '--study', 'smoke', '--shard', '3/2', '--run-dir', run], '3/2'),
        (['status', '/no/such/run'], '/no/such/run'),
    ]
    for argv, *needles in cli:
        run_case(I, 'cli ' + ' '.join(argv), lambda argv=argv, needles=needles: _expect_cli(argv, *needles))

# ================================================================ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--skip-pytest', action='store_true', help="don't run the training damage tests (marks those kinds FAIL)")
    ap.add_argument('--only', choices=['settings', 'damage', 'inputs'], default=None)
    a = ap.parse_args(argv)
    warnings.filterwarnings('ignore', category=DeprecationWarning); warnings.filterwarnings('ignore', category=FutureWarning)
    torch.set_num_threads(1)
    parts = {'settings': settings_cases, 'damage': lambda: damage_cases(a.skip_pytest), 'inputs': input_cases}
    for name, fn in parts.items():
        if a.only in (None, name): fn()
    print()
    for cat, label, target in (('setting', 'result-changing settings honoured', 9), ('damage', 'damaged-file kinds healed', 11),
                               ('input', 'bad inputs with a clear error', 50), ('control', 'controls (must not change a key)', None)):
        rs = [r for r in RESULTS if r[0] == cat]
        if not rs: continue
        n = sum(r[2] for r in rs)
        print(f'{label}: {n}/{len(rs)}' + (f' (list length {len(rs)}, expected {target})' if target and len(rs) != target else ''))
        for r in rs:
            if not r[2]: print(f'    FAIL {r[1]}')
    shutil.rmtree(TMP, ignore_errors=True)
    return 0

if __name__ == '__main__': sys.exit(main())
