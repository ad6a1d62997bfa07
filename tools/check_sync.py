"""Fail when notebooks and library are out of sync, notebooks carry outputs, or README.md is stale.

Runs `nbdev_export`, `nbdev_clean` and the README renderer, and compares file hashes before and after, so
it works the same on a dirty working tree as in CI (it does not rely on `git status`)."""
import hashlib, subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
bin_dir = Path(sys.executable).parent

def snapshot():
    files = [*root.glob('open_forgetting/**/*.py'), *root.glob('nbs/**/*.ipynb'), root / 'README.md']
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
            if p.exists() and '.ipynb_checkpoints' not in p.parts}

before = snapshot()
for cmd in ([bin_dir / 'nbdev_export'], [bin_dir / 'nbdev_clean'], [sys.executable, root / 'tools/render_readme.py']):
    subprocess.run([str(c) for c in cmd], cwd=root, check=True)
after = snapshot()
changed = sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
if changed:
    print('check_sync: these files were out of sync (now regenerated; review and commit them):')
    print('\n'.join(f'  {c}' for c in changed))
    print('Fix: edit the notebooks in nbs/, then run `make lib` (nbdev_export + nbdev_clean) before committing.')
    sys.exit(1)
print(f'check_sync: {len(after)} files in sync (library = notebooks, no outputs, README = nbs/index.ipynb)')
