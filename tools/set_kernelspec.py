"""Give every notebook in nbs/ the `python3` kernelspec (papermill needs a kernel name; nbdev_clean keeps it)."""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
spec = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}
for p in sorted(root.glob('nbs/**/*.ipynb')):
    if '.ipynb_checkpoints' in p.parts: continue
    nb = json.loads(p.read_text(encoding='utf-8'))
    if nb.get('metadata', {}).get('kernelspec') != spec:
        nb.setdefault('metadata', {})['kernelspec'] = spec
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
        print(f'kernelspec set: {p.relative_to(root)}', file=sys.stderr)
