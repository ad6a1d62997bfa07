#!/usr/bin/env python
"""Run the `miniworld-full` grid (issue 18) for some training seeds and publish every finished cell's tidy tables into
data/miniworld/results/ (`results.publish_run`), so that the grid can go on in pieces on other machines.

    .venv/bin/python tools/run_grid.py --seeds 0                 # seed 0: two shards side by side, one thread each
    .venv/bin/python tools/run_grid.py --seeds 1,2 --shards 1 --threads 2
    .venv/bin/python tools/run_grid.py --seeds 0 --publish-only   # publish what the run folders hold, run nothing
    .venv/bin/python tools/run_grid.py --seeds 0,1,2 --methods lora   # one method's cells (after its settings changed)

Each seed is split into `--shards` shards (`open-forgetting run --shard i/N`, whole cells), each in its own run folder
under `--runs` (caches stay in $OPEN_FORGETTING_HOME, weights in the run folders) and each its own process with
`--threads` torch threads (the laboratory ran its models the same way, one thread per process on the 2-core CPU:
papermill's kernel start-ups and the small model's kernels leave a second thread of one process partly idle). The runner skips finished notebooks and publishing is
idempotent, so an interrupted grid continues where it stopped. Timings per notebook: `<run folder>/jobs-<i>of<N>.csv`.
"""
import argparse, os, subprocess, sys
from pathlib import Path

STUDY = 'miniworld-full'
EXPERIMENTS = 'customize,global_drift,local_drift,color,diversity'   # drift_map is a run of its own (tools/run_lab.py)


def shard_dirs(runs: Path, seed: int, shards: int) -> list[Path]:
    return [runs / f'seed-{seed}' / f'shard-{i}of{shards}' for i in range(1, shards + 1)]


def run_seed(seed: int, runs: Path, shards: int, threads: int, experiments: str, methods: str | None = None) -> None:
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    procs, logs = [], []
    for i, run_dir in enumerate(shard_dirs(runs, seed, shards), start=1):
        cmd = [sys.executable, '-m', 'open_forgetting.cli', 'run', '--study', STUDY, '--set', f'training.settings.seed={seed}',
               '--experiments', experiments, '--run-dir', str(run_dir), '--shard', f'{i}/{shards}', *(['--methods', methods] if methods else [])]
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir.with_suffix('.log'), 'a'); logs.append(log)
        print(f'# seed {seed} shard {i}/{shards}:', ' '.join(cmd[2:]), f'(log: {log.name})', flush=True)
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    failed = [i for i, p in enumerate(procs, start=1) if p.wait() != 0]
    for log in logs: log.close()
    if failed:
        print(f'# seed {seed}: shard(s) {failed} failed; their finished cells are published, rerun to continue', flush=True)


def publish_seed(seed: int, runs: Path, shards: int) -> None:
    from open_forgetting.results import publish_run
    for run_dir in shard_dirs(runs, seed, shards):
        if run_dir.exists(): print(publish_run(run_dir, seed=seed, study=STUDY).to_string(index=False), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', required=True, help='comma-separated training seeds, e.g. 0 or 1,2')
    p.add_argument('--shards', type=int, default=2, help='processes side by side per seed (default 2)')
    p.add_argument('--threads', type=int, default=1, help='torch threads per process (default 1)')
    p.add_argument('--experiments', default=EXPERIMENTS, help=f'comma-separated (default: {EXPERIMENTS})')
    p.add_argument('--methods', default=None, help="comma-separated methods (default: the study's)")
    p.add_argument('--runs', default=os.environ.get('OPEN_FORGETTING_GRID_RUNS', '/tmp/grid'), help='folder of the run folders')
    p.add_argument('--publish-only', action='store_true', help='publish what the run folders hold; run nothing')
    a = p.parse_args(argv)
    if a.shards < 1 or a.threads < 1: raise SystemExit(f'--shards and --threads must be at least 1, got {a.shards} and {a.threads}.')
    for seed in [int(s) for s in a.seeds.split(',')]:
        if not a.publish_only: run_seed(seed, Path(a.runs), a.shards, a.threads, a.experiments, a.methods)
        publish_seed(seed, Path(a.runs), a.shards)


if __name__ == '__main__':
    main()
