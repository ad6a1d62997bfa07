"""The audit of an exported model reproduces the study's own evaluation of the same model (same images, same paired
noise): a DreamBooth run exported as a diffusers pipeline folder, and a LoRA run exported as a LoRA file applied to the
base through diffusers' own loader."""
import pytest

from open_forgetting.audit import TUNED, audit_tables, load_pair
from open_forgetting.interop import export_run
from open_forgetting.study import cell_models, ensure_customized, load_study, load_study_model, semantic_drift

COLUMNS = ['dataset', 'accuracy', 'base_accuracy', 'drop', 'worst_drop', 'worst_class']


@pytest.mark.parametrize('method,fmt', [('dreambooth', 'pipeline'), ('lora', 'lora')])
def test_audit_of_an_export_equals_the_studys_numbers(tmp_path, method, fmt):
    study = load_study('smoke', {'classification.datasets': {'miniworld:shape': {}}, 'training.methods': [method]})
    run = tmp_path / 'run'
    model = load_study_model(study, run, 'heart_emblem', method, 'plain')
    base = load_study_model(study, run, 'heart_emblem', 'base', 'plain')
    models, identity = cell_models(base, model, method, 'plain')
    own = semantic_drift(models, study, identity=identity).summary
    own = own[own.model != 'base'][COLUMNS].reset_index(drop=True)

    exported = export_run(ensure_customized(study, run, 'heart_emblem', method, 'plain'), tmp_path / 'export', fmt)
    b, t = load_pair(study, exported)
    audited = audit_tables(study, b, t)['semantic_drift']
    audited = audited[audited.model == TUNED][COLUMNS].reset_index(drop=True)
    assert audited.equals(own), (audited, own)
