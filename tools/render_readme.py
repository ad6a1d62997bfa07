"""Render README.md from nbs/index.ipynb (markdown cells verbatim, code cells as fenced python).

nbdev's own `nbdev_readme` needs Quarto, which this project does not require; this keeps the same contract
(index.ipynb is the source of README.md) with nothing but the standard library."""
import json
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root / 'nbs/index.ipynb').read_text(encoding='utf-8'))
parts = ['<!-- Generated from nbs/index.ipynb by tools/render_readme.py: edit the notebook, not this file. -->']
for cell in nb['cells']:
    src = ''.join(cell['source']).strip()
    if not src or src.startswith('#|hide'): continue
    if cell['cell_type'] == 'markdown': parts.append(src)
    elif cell['cell_type'] == 'code':
        parts.append('```python\n' + '\n'.join(l for l in src.splitlines() if not l.startswith('#|')) + '\n```')
text = '\n\n'.join(parts) + '\n'
out = root / 'README.md'
if not out.exists() or out.read_text(encoding='utf-8') != text: out.write_text(text, encoding='utf-8')
