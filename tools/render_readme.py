"""Render README.md from nbs/index.ipynb (markdown cells verbatim, code cells as fenced python).

nbdev's own `nbdev_readme` needs Quarto, which this project does not require; this keeps the same contract
(index.ipynb is the source of README.md) with the standard library, plus one computation: the placeholder
`{{cost-table}}` in a markdown cell becomes the table of what the shipped studies cost, computed by
`open_forgetting.study.plan` (so no cost figure in the README is prose)."""
import json
from pathlib import Path

root = Path(__file__).resolve().parents[1]

# (label, study, overrides, device, gpu): the rows of the cost table (gpu: a measured row of throughput.yaml, or
# None for the first GPU row, the reference's published A100 figure)
COST_ROWS = [
    ('`miniworld` (the demo)', 'miniworld', {}, 'cpu', None),
    ('`sd15` as shipped', 'sd15', {}, 'cuda', 'NVIDIA A100'),
    ('`sd15` as shipped', 'sd15', {}, 'cuda', 'NVIDIA H200'),
    ('`sd15` as shipped', 'sd15', {}, 'cpu', None),
    ('`sd15`, whole test splits', 'sd15', 'all', 'cuda', 'NVIDIA H200'),
]


def cost_table() -> str:
    "A markdown table: UNet evaluations, images, hours and the throughput behind them, per shipped study (`plan`)."
    from open_forgetting.study import load_study, plan
    lines = ['| study | device | UNet evaluations | of which classification | images | estimated hours | throughput used |',
             '|---|---|---:|---:|---:|---:|---|']
    for label, name, overrides, device, gpu in COST_ROWS:
        study = load_study(name, check_paths=False)
        if overrides == 'all':
            study = load_study(name, {f'classification.datasets.{d}.n_per_class': 'all' for d in study.classification.datasets},
                               check_paths=False)
        p = plan(study, device=device, gpu=gpu)
        cls = p[p.stage.str.startswith('classification')].evaluations.sum()
        hours = p.hours.sum()
        lines.append(f'| {label} | {device if gpu is None else gpu.removeprefix("NVIDIA ")} | {p.evaluations.sum() / 1e6:,.2f} M | {cls / 1e6:,.2f} M | {p.images.sum():,} | '
                     f'{hours:,.2f} | {p.attrs["throughput"]} |')
    return '\n'.join(lines)


def render() -> str:
    nb = json.loads((root / 'nbs/index.ipynb').read_text(encoding='utf-8'))
    parts = ['<!-- Generated from nbs/index.ipynb by tools/render_readme.py: edit the notebook, not this file. -->']
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip()
        if not src or src.startswith('#|hide'): continue
        if cell['cell_type'] == 'markdown':
            parts.append(src.replace('{{cost-table}}', cost_table()) if '{{cost-table}}' in src else src)
        elif cell['cell_type'] == 'code':
            parts.append('```python\n' + '\n'.join(l for l in src.splitlines() if not l.startswith('#|')) + '\n```')
    return '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
    text, out = render(), root / 'README.md'
    if not out.exists() or out.read_text(encoding='utf-8') != text: out.write_text(text, encoding='utf-8')
