"""Retrain the miniature world's oracle and ship it: `python tools/train_oracle.py [--out data/miniworld/oracle]`.

Renders a fresh training set with `open_forgetting.miniworld.render`, trains `open_forgetting.oracle.Oracle` on one CPU
thread (a few minutes), measures its held-out accuracy per attribute on renders from a stream it never saw, and writes
`model.safetensors` + `recipe.json` (recipe, accuracies, training time, SHA-256) into the output folder."""
import argparse, json, os
from dataclasses import fields
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch

from open_forgetting.oracle import OracleTrainConfig, save_oracle, train_oracle

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=str(Path(__file__).resolve().parents[1] / 'data' / 'miniworld' / 'oracle'))
    numbers = {'int': int, 'float': float}  # the recipe's scalar fields (annotations are strings under `from __future__`)
    for f in fields(OracleTrainConfig):
        if str(f.type) in numbers: p.add_argument(f'--{f.name.replace("_", "-")}', type=numbers[str(f.type)])
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the recipe is timed on one)')
    p.add_argument('--min-accuracy', type=float, default=0.98, help='refuse to ship an oracle below this held-out accuracy')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = OracleTrainConfig(**{f.name: getattr(a, f.name) for f in fields(OracleTrainConfig)
                               if getattr(a, f.name, None) is not None})
    oracle, recipe = train_oracle(cfg)
    print(json.dumps({k: recipe[k] for k in ('heldout_accuracy', 'heldout_accuracy_augmented',
                                             'concept_heldout_shape_accuracy', 'train_seconds')}, indent=1))
    worst = min(recipe['heldout_accuracy'].values())
    if worst < a.min_accuracy:
        raise SystemExit(f"held-out accuracy {worst:.4f} < --min-accuracy {a.min_accuracy}: not saved "
                         "(train longer with --epochs or --n-train, or lower --min-accuracy).")
    folder = save_oracle(oracle, a.out, recipe)
    print(f"wrote {folder}/model.safetensors ({(folder / 'model.safetensors').stat().st_size / 1e6:.2f} MB) and recipe.json")

if __name__ == '__main__':
    main()
