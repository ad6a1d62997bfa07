"""Issue 19: training launched the accelerate way on 2 CPU processes (gloo).

`accelerate launch --cpu` always starts ONE process (accelerate's simple launcher; several CPU processes need an MPI
hostfile, `--mpirun_hostfile`). `accelerate launch --multi_gpu --num_processes 2` starts two through
torch.distributed.run; on a machine without a GPU (here: CUDA_VISIBLE_DEVICES='') the Accelerator runs them as
MULTI_CPU over gloo. Each process draws the global batch and keeps its share (`train.shard_rows`), so 2 processes of
batch B train what 1 process of batch 2B trains, up to the order of floating-point sums."""
import os, socket, subprocess, sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CELL = ['train', '--study', 'smoke', '--concept', 'heart_emblem', '--method', 'dreambooth', '--variant', 'dc',
        '--set', 'training.settings.checkpoint_every=2']
STOP_AT = """import os, sys
from open_forgetting import train as T
real = T.Trainer.train_step
def train_step(self):                      # a killed run: every process dies before step 3 (the last checkpoint is step 2)
    if self.step == 2 and (self.run_dir / 'checkpoints' / 'step_000002').exists(): os._exit(17)
    return real(self)
T.Trainer.train_step = train_step
from open_forgetting.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _env(home: Path) -> dict:
    env = {**os.environ, 'OPEN_FORGETTING_HOME': str(home), 'HF_HOME': str(home / 'hf'),   # no user accelerate config
           'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    env.pop('ACCELERATE_MIXED_PRECISION', None)
    return env


def _launch(run_dir: Path, home: Path, processes: int, *extra: str, script: Path | None = None, mixed_precision: str = 'no',
            check: bool = True) -> subprocess.CompletedProcess:
    "`accelerate launch [--multi_gpu] --num_processes N --mixed_precision MP -m open_forgetting train ...` (or `script`)."
    accelerate = [sys.executable, '-m', 'accelerate.commands.launch']
    dist = ['--multi_gpu', '--main_process_port', str(_free_port())] if processes > 1 else []
    target = [str(script)] if script else ['-m', 'open_forgetting']
    cmd = [*accelerate, *dist, '--num_processes', str(processes), '--num_machines', '1', '--mixed_precision', mixed_precision,
           '--dynamo_backend', 'no', *target, *CELL, '--run-dir', str(run_dir), *extra]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0: raise AssertionError(f'{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}')
    return out


def _model(run_dir: Path) -> Path: return run_dir / 'heart_emblem' / 'dreambooth-dc' / 'customize' / 'model'


def _weights(run_dir: Path) -> dict: return load_file(_model(run_dir) / 'trained.safetensors')


@pytest.mark.slow
def test_two_processes_train_what_one_process_of_the_global_batch_trains_and_resume_exactly(tmp_path):
    home = tmp_path / 'home'
    # 1 process, batch 2 and 4 DC samples  ==  2 processes, each batch 1 and 2 DC samples (the smoke study's)
    one = _launch(tmp_path / 'one', home, 1, '--set', 'training.settings.train_batch_size=2',
                  '--set', 'drift_correction.settings.dc_n_reg=4')
    two = _launch(tmp_path / 'two', home, 2)
    assert one.stdout.count('open-forgetting train: heart_emblem') == 1 and two.stdout.count('open-forgetting train: heart_emblem') == 1
    a, b = _weights(tmp_path / 'one'), _weights(tmp_path / 'two')
    assert a.keys() == b.keys()
    # equal up to the order of fp32 sums (measured: at most 5.4e-7 apart); a different batch would move a weight by about
    # one AdamW step, lr = 2e-5 (1e-3 for the identifier's embedding), far outside this tolerance
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=5e-6, msg=lambda m: f'{k}: {m}')
    import json
    h1 = json.loads((_model(tmp_path / 'one') / 'run.json').read_text())['final_losses']
    h2 = json.loads((_model(tmp_path / 'two') / 'run.json').read_text())['final_losses']
    assert h1.keys() == h2.keys() and all(abs(h1[k] - h2[k]) <= 1e-5 * max(1.0, abs(h1[k])) for k in h1), (h1, h2)   # global-batch losses

    # killed after the step-2 checkpoint, then resumed by the same command: equal to the uninterrupted 2-process run
    script = tmp_path / 'stop_at.py'; script.write_text(STOP_AT)
    killed = _launch(tmp_path / 'resumed', home, 2, script=script, check=False)
    assert killed.returncode != 0 and not (_model(tmp_path / 'resumed') / 'trained.safetensors').exists()
    ckpts = sorted(p.name for p in (_model(tmp_path / 'resumed') / 'checkpoints').iterdir())
    assert ckpts == ['step_000002'], ckpts
    _launch(tmp_path / 'resumed', home, 2)
    c = _weights(tmp_path / 'resumed')
    assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in b)


@pytest.mark.slow
def test_the_launchers_mixed_precision_reaches_a_two_process_run(tmp_path):
    import json
    _launch(tmp_path / 'bf16', tmp_path / 'home', 2, '--set', 'training.settings.max_steps=1', mixed_precision='bf16')
    info = json.loads((_model(tmp_path / 'bf16') / 'run.json').read_text())
    assert info['config']['mixed_precision'] is None and info['identity']['config']['mixed_precision'] == 'bf16'


@pytest.mark.parametrize('latents, pool', [('batch', 0), ('prior', 0), ('batch', 4)])
def test_the_ranks_shares_make_the_global_batch(small, concept, tmp_path, latents, pool):
    "Fast, in one process: the loss terms of ranks 0 and 1 of two (each keeping its share of the global draw) average to the terms one process of the doubled batch computes at the same weights."
    from open_forgetting.core import torch_generator
    from open_forgetting.train import Trainer, variant_config
    kw = dict(max_steps=2, num_class_images=3, class_sampling_steps=2, dc_prompts='empty', progress=False, dc_latents=latents,
              dc_teacher_pool=pool)
    def moved(tr):                       # the same small move of every student away from θ0, so that DC is not 0
        g = torch_generator(5)
        with torch.no_grad():
            for p in tr.student.unet.conv_out.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
        return tr
    one = moved(Trainer(small, concept, variant_config('dreambooth', 'dc', train_batch_size=2, dc_n_reg=4, **kw), tmp_path / 'one'))
    want = {k: v.item() for k, v in one._forward().items()}
    got = []
    for rank in (0, 1):
        tr = moved(Trainer(small, concept, variant_config('dreambooth', 'dc', train_batch_size=1, dc_n_reg=2, **kw), tmp_path / 'two'))
        tr.rank, tr.processes = rank, 2; tr._setup_teacher()              # as process `rank` of two (its teacher pool too)
        got.append({k: v.item() for k, v in tr._forward().items()})
    assert want.keys() == got[0].keys() == {'inst', 'prior', 'dc'}
    for k in want: assert (got[0][k] + got[1][k]) / 2 == pytest.approx(want[k], rel=1e-5, abs=1e-9), k
    assert want['dc'] > 1e-4 and got[0]['inst'] != got[1]['inst'] and got[0]['dc'] != got[1]['dc']   # different samples
