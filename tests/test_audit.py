"""The audit of an exported model reproduces the study's own evaluation of the same model (same images, same paired
noise): a DreamBooth run exported as a diffusers pipeline folder, and a LoRA run exported as a LoRA file applied to the
base through diffusers' own loader."""
import re

import pytest

from open_forgetting.audit import TUNED, audit_tables, load_pair
from open_forgetting.interop import export_run
from open_forgetting.study import cell_models, ensure_customized, load_study, load_study_model, semantic_drift

COLUMNS = ['dataset', 'accuracy', 'base_accuracy', 'drop', 'worst_drop', 'worst_class']


@pytest.mark.parametrize('method,fmt', [('dreambooth', 'pipeline'), ('lora', 'lora')])
def test_audit_of_an_export_equals_the_studys_numbers(tmp_path, monkeypatch, method, fmt):
    study = load_study('smoke', {'classification.datasets': {'miniworld:shape': {}}, 'training.methods': [method]})
    run = tmp_path / 'run'
    model = load_study_model(study, run, 'heart_emblem', method, 'plain')
    base = load_study_model(study, run, 'heart_emblem', 'base', 'plain')
    models, identity = cell_models(base, model, method, 'plain')
    own = semantic_drift(models, study, identity=identity).summary
    own = own[own.model != 'base'][COLUMNS].reset_index(drop=True)

    trained = ensure_customized(study, run, 'heart_emblem', method, 'plain')
    fresh = tmp_path / 'fresh_home'            # an empty classifier cache: the audit classifies again instead of reading the study's results
    monkeypatch.setenv('OPEN_FORGETTING_HOME', str(fresh))
    exported = export_run(trained, tmp_path / 'export', fmt)
    b, t = load_pair(study, exported)
    audited = audit_tables(study, b, t)['semantic_drift']
    audited = audited[audited.model == TUNED][COLUMNS].reset_index(drop=True)
    assert audited.equals(own), (audited, own)
    assert len(list((fresh / 'cache' / 'classifier').iterdir())) >= 2         # base and tuned were classified afresh


def test_report_with_two_images_a_side_says_there_is_no_kid_interval(tmp_path):
    "1 paired seed x 2 generic prompts: KID has no interval (kid_interval gives NaN); report.md and report.html say so in words."
    import copy
    from open_forgetting.audit import audit_study, write_report
    from open_forgetting.study import load_base
    study = audit_study('miniworld', 'smoke', {'classification.datasets': {}, 'seeds.paired': [0],
                                               'seeds.control': [100], 'appearance.n_generic_prompts': 2})
    base = load_base(study)
    tables = audit_tables(study, base, copy.deepcopy(base))
    assert (tables['kid'].n == 2).all() and tables['kid'].kid_lo.isna().all()
    out = write_report(tables, tmp_path / 'report', 'two a side')
    for page in ('report.md', 'report.html'):
        text = re.sub(r'data:image/png;base64,[A-Za-z0-9+/=]+', '', (out / page).read_text())    # the embedded figures
        assert 'no interval (2 images a side)' in text and not re.search(r'\bnan\b', text, re.I), page
    md = (out / 'report.md').read_text()
    assert all((out / line.split('](')[1].rstrip(')')).is_file() for line in md.splitlines() if line.startswith('!['))
