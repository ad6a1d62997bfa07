"""Opt-in (slow, ~30-60 min on 2 cores, ~20 GB of memory and 10 GB of disk): a slice of the full-size rehearsal.

`benchmarks/rehearse_full_size.py` builds Stable Diffusion 1.5 at full size from its published configs with random
weights, saves it as a diffusers folder, writes a study file pointing at it, at datasets in their real on-disk formats and
at a DreamBench-layout concept, and runs the real path through the runner. This slice trains LoRA with Drift Correction
(the default settings: memory-safe defaults decide gradient checkpointing and precision) and measures its global drift,
then renders the report; every stage must finish and the process tree's peak memory must stay under 20 GB."""
import os, re, subprocess, sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get('OPEN_FORGETTING_SLOW') != '1', reason='full-size rehearsal; set OPEN_FORGETTING_SLOW=1')]
ROOT = Path(__file__).resolve().parents[1]


def test_full_size_rehearsal_slice(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks/rehearse_full_size.py'), '--arch', 'sd15', '--out', str(tmp_path),
                        '--methods', 'lora', '--variants', 'dc', '--experiments', 'customize,global_drift',
                        '--extra-experiments', '', '--train-resolution', '256'], capture_output=True, text=True, cwd=ROOT)
    summary = [l for l in r.stdout.splitlines() if l.startswith('rehearsal sd15:') and 'stages not done' in l]
    assert r.returncode == 0 and summary, f"rehearsal failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    peak = float(re.search(r'peak RSS ([\d.]+) GB', summary[-1]).group(1))
    assert ' 0 stages not done' in summary[-1] and peak <= 20.0, summary[-1]
