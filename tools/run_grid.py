#!/usr/bin/env python
"""Run the `miniworld-full` grid (issue 18) for some training seeds and publish every finished cell's tidy tables into
data/miniworld/results/ (`results.publish_run`), so that the grid can go on in pieces on other machines.

    .venv/bin/python tools/run_grid.py --seeds 0                 # seed 0: two shards side by side, one thread each
    .venv/bin/python tools/run_grid.py --seeds 1,2 --shards 1 --threads 2
    .venv/bin/python tools/run_grid.py --seeds 0 --publish-only   # publish what the run folders hold, run nothing
    .venv/bin/python tools/run_grid.py --seeds 0,1,2 --methods lora   # one method's cells (after its settings changed)

Each seed is split into `--pieces` pieces (`open-forgetting run --shard i/N`, whole cells), each in its own run folder
under `--runs` (caches stay in $OPEN_FORGETTING_HOME, weights in the run folders) and each its own process with
`--threads` torch threads (the laboratory ran its models the same way, one thread per process on the 2-core CPU:
papermill's kernel start-ups and the small model's kernels leave a second thread of one process partly idle).
`--shards` processes run side by side and take the pieces of every requested seed in turn, so with more pieces than
processes one that finishes early takes the next piece instead of waiting for its partner (9 cells in 2 pieces: one
process idles for a fifth of the seed); each seed is published as soon as its pieces are done. The runner skips finished
notebooks and publishing is idempotent, so an interrupted grid continues where it stopped, given the same `--pieces`
(the run folders are named by it). Timings per notebook: `<run folder>/jobs-<i>of<N>.csv`.

    .venv/bin/python tools/run_grid.py --seeds 0,1,2 --methods hypermod --pieces 9   # one cell per piece, 2 at a time
"""
import argparse, os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

STUDY = 'miniworld-full'
EXPERIMENTS = 'customize,global_drift,local_drift,color,diversity'   # drift_map is a run of its own (tools/run_lab.py)


def shard_dirs(runs: Path, seed: int, pieces: int) -> list[Path]:
    return [runs / f'seed-{seed}' / f'shard-{i}of{pieces}' for i in range(1, pieces + 1)]


def run_piece(seed: int, piece: int, runs: Path, pieces: int, threads: int, experiments: str, methods: str | None = None) -> int:
    "Run piece `piece` of `pieces` of one training seed in its own process and run folder; its exit status."
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    run_dir = shard_dirs(runs, seed, pieces)[piece - 1]
    cmd = [sys.executable, '-m', 'open_forgetting.cli', 'run', '--study', STUDY, '--set', f'training.settings.seed={seed}',
           '--experiments', experiments, '--run-dir', str(run_dir), '--shard', f'{piece}/{pieces}', *(['--methods', methods] if methods else [])]
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f'# seed {seed} piece {piece}/{pieces}:', ' '.join(cmd[2:]), f'(log: {run_dir.with_suffix(".log")})', flush=True)
    with open(run_dir.with_suffix('.log'), 'a') as log: rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc: print(f'# seed {seed} piece {piece}/{pieces} failed (exit {rc}); its finished cells are published, rerun to continue', flush=True)
    return rc


def run_seeds(seeds: list[int], runs: Path, shards: int, pieces: int, threads: int, experiments: str, methods: str | None = None) -> None:
    "Every seed's pieces through `shards` processes side by side, in seed order; each seed published once its pieces are done."
    left = {seed: pieces for seed in seeds}
    with ThreadPoolExecutor(shards) as pool:
        running = {pool.submit(run_piece, seed, i, runs, pieces, threads, experiments, methods): seed
                   for seed in seeds for i in range(1, pieces + 1)}
        for done in as_completed(running):
            seed = running[done]; left[seed] -= 1
            if not left[seed]: publish_seed(seed, runs, pieces)


def publish_seed(seed: int, runs: Path, pieces: int) -> None:
    from open_forgetting.results import publish_run
    for run_dir in shard_dirs(runs, seed, pieces):
        if run_dir.exists(): print(publish_run(run_dir, seed=seed, study=STUDY).to_string(index=False), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', required=True, help='comma-separated training seeds, e.g. 0 or 1,2')
    p.add_argument('--shards', type=int, default=2, help='processes side by side (default 2)')
    p.add_argument('--pieces', type=int, default=None, help='pieces each seed is split into, whole cells each (default: --shards); '
                   'keep it when continuing a run')
    p.add_argument('--threads', type=int, default=1, help='torch threads per process (default 1)')
    p.add_argument('--experiments', default=EXPERIMENTS, help=f'comma-separated (default: {EXPERIMENTS})')
    p.add_argument('--methods', default=None, help="comma-separated methods (default: the study's)")
    p.add_argument('--runs', default=os.environ.get('OPEN_FORGETTING_GRID_RUNS', '/tmp/grid'), help='folder of the run folders')
    p.add_argument('--publish-only', action='store_true', help='publish what the run folders hold; run nothing')
    a = p.parse_args(argv)
    pieces = a.pieces or a.shards
    if min(a.shards, a.threads, pieces) < 1:
        raise SystemExit(f'--shards, --pieces and --threads must be at least 1, got {a.shards}, {pieces} and {a.threads}.')
    seeds = [int(s) for s in a.seeds.split(',')]
    if a.publish_only:
        for seed in seeds: publish_seed(seed, Path(a.runs), pieces)
    else: run_seeds(seeds, Path(a.runs), a.shards, pieces, a.threads, a.experiments, a.methods)


if __name__ == '__main__':
    main()
