#!/usr/bin/env bash
# Create the project-local virtual environment and install open_forgetting (editable, dev extras)
# against the tested pins in constraints.txt. Prefers uv (fast); falls back to pip.
# The pins also dodge the local torch 2.13.0+cpu find-links trap (a torch 2.13.0+cpu wheel that fails with the registry torchvision): uv does not
# read pip's find-links, and the constraint torch==<tested> keeps pip from picking that wheel.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q uv || echo "bootstrap: uv unavailable, using pip"
fi
if command -v uv >/dev/null 2>&1; then
  [ -x "$VENV/bin/python" ] || uv venv -q -p "$PYTHON" "$VENV"
  # --compile-bytecode: uv writes no .pyc by default (pip does), and with PYTHONDONTWRITEBYTECODE set nothing ever
  # caches them, so every process (each test worker, notebook kernel, CLI run) recompiled torch, diffusers and
  # transformers from source: ~20 s of CPU per `import open_forgetting.study` on 2 cores, ~9 s with the bytecode
  uv pip install -q --compile-bytecode -p "$VENV/bin/python" -c constraints.txt -e '.[dev]'
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[dev]'
fi
# uv compiles only what it installs: an environment made before --compile-bytecode gets its bytecode once here
# (compileall exits non-zero on a few test files written for newer Pythons; that is expected)
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -n "$(ls "$SITE"/torch/__pycache__ 2>/dev/null)" ] || "$VENV/bin/python" -m compileall -q -j 0 "$SITE" >/dev/null 2>&1 || true
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
"$VENV/bin/python" - <<'PY'
import torch, torchvision  # fails loudly on a mismatched pair
import open_forgetting
print(f"bootstrap: open_forgetting {open_forgetting.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
