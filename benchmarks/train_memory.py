"""Peak memory of full-size DreamBooth training on this machine: the SD-1.5 (or SD-2.1) architecture with random
weights, 512 px, a few steps, one class image; each configuration in a fresh process.

    python benchmarks/train_memory.py                                  # every configuration below, SD-1.5
    python benchmarks/train_memory.py --configs db,db-kept --steps 2

Configurations (`--configs`, comma-separated):
    db          DreamBooth with the package's memory defaults (the base UNet waits on disk when memory is short)
    db-kept     DreamBooth with the base UNet kept in memory (offload_base=False): the comparison
    db-dc       DreamBooth-DC, live teacher (the caller's UNet: it stays in memory)
    db-dc-pool  DreamBooth-DC with a teacher pool of 8 predictions (the base UNet then waits on disk too)

Each configuration runs in a fresh process, by default inside a memory cgroup capped at `--cap-gb` (20 GB =
20e9 bytes; Linux cgroup v1 memory controller, as root): a run that finishes there fits in that much memory, page
cache included, which the kernel reclaims inside the cap before it kills anything. Printed per configuration: done or
killed, the peak anonymous memory of the process (`core.peak_memory` sampled every 0.1 s while it loads the base and
trains, plus what it held before: what the OS cannot reclaim), its peak
resident set (VmHWM: anonymous and file pages together, loading the base included), the cgroup's peak usage, the
wall time and the run's `memory:` line. A figure taken while anything else runs is no measurement: the load average
is printed before and after.

What a GPU would need, measured here (`--tensor-bytes`, with `--free-gib` for the card's free memory): the peak of the
bytes of all tensor storages alive at once (every storage an operator reads or writes, counted once until it is
freed): what a GPU's caching allocator must hold for the same run, without the CUDA context, library workspaces and
fragmentation (add about 1 GiB). `--free-gib 23` makes the training's memory rules (gradient checkpointing, base UNet
on disk) decide as on a 24 GiB card with ~23 GiB free instead of from this machine's RAM.

    python benchmarks/train_memory.py --configs db --steps 2 --cap-gb 0 --tensor-bytes --free-gib 23

Measured so on this CPU (2026-12-05, library of e85af9e, DreamBooth, 2 steps: the second step is the first with AdamW's
state alive during forward and backward; a 1-step run peaks lower, at the optimizer step):
- SD-1.5, 512 px, rules as on 23 GiB free: checkpointing off, base UNet in memory; peak live tensors 17.84 GiB
  (peak anonymous memory 17.46 GB, RSS 21.79 GB with the memory-mapped base);
- SD-2.1, 768 px, rules as on 23 GiB free: checkpointing on, base UNet on disk; peak live tensors 15.54 GiB (peak
  anonymous 20.60 GB = 19.2 GiB: the CPU process holds ~3.6 GiB more than its live tensors, allocator caches and
  libraries, or storages that escape the dispatcher).
On a 24 GiB card, with ~1 GiB for the CUDA context and workspaces, both fit (18.8 GiB; at most 20.2 GiB if the CPU's
anonymous peak is the truer figure): an estimate from this CPU, not a GPU measurement.
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

CONFIGS = {
    'db': dict(method='dreambooth', variant='plain'),
    'db-kept': dict(method='dreambooth', variant='plain', offload_base=False),
    'db-dc': dict(method='dreambooth', variant='dc'),
    'db-dc-pool': dict(method='dreambooth', variant='dc', dc_teacher_pool=8),
}

_CHILD = r'''
import json, sys, time
import psutil
from open_forgetting.core import peak_memory
from open_forgetting.models import load_components
from open_forgetting.train import customize, variant_config, load_json
t0, mem = time.time(), psutil.Process().memory_info()
start = mem.rss - mem.shared                       # anonymous memory held before loading (peak_memory's measure)
base_dir, concept, out, steps, resolution, kw = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
tensor_bytes, free_gib = sys.argv[7] == '1', float(sys.argv[8])
if free_gib:                                       # the memory rules decide as on a device with this much free memory
    import open_forgetting.train as _train
    _train.free_memory = lambda device=None: int(free_gib * 2**30)
def load_and_train():
    cfg = variant_config(kw.pop('method'), kw.pop('variant'), max_steps=steps, resolution=resolution, num_class_images=1,
                         class_sampling_steps=2, checkpoint_every=0, progress=False, dc_n_reg=1, **kw)
    base = load_components(base_dir)
    if tensor_bytes:                               # loaded weights count from the start (a frozen one may never meet an operator)
        for module in (base.unet, base.vae, base.text_encoder):
            for t in [*module.parameters(), *module.buffers()]: tensors.see(t)
    return customize(base, concept, cfg, out, resume=False)
tensors = PeakTensorBytes() if tensor_bytes else contextlib.nullcontext()
with tensors: run, held = peak_memory(load_and_train, 'cpu', interval_s=0.1)
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) * 1024
print('MEMORY ' + json.dumps(dict(peak_rss_gib=hwm / 2**30, peak_anon_gib=(start + held) / 2**30, seconds=time.time() - t0,
                                  peak_tensor_gib=tensors.peak / 2**30 if tensor_bytes else None,
                                  summary=load_json(f'{run}/run.json')['memory']['summary'])))
'''

# Written by hand: torch's MemTracker (torch.distributed._tools) does the same accounting but refuses a root module
# called twice in one forward pass (the text encoder, the VAE) and hooks gradients onto every parameter (frozen ones fail).
_TENSOR_BYTES = r'''
import contextlib, weakref
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

class PeakTensorBytes(TorchDispatchMode):
    "The bytes of the tensor storages alive at once (any storage an operator reads or writes, counted once until freed; memory maps of weights waiting on disk not), and their peak."
    def __init__(self): super().__init__(); self.live, self.now, self.peak, self.on_disk = {}, 0, 0, set()
    def _forget(self, key): self.now -= self.live.pop(key, 0)
    def see(self, t):
        st = t.untyped_storage(); key = st._cdata
        if key in self.live or key in self.on_disk or t.device.type == 'meta': return
        self.live[key] = st.nbytes(); self.now += st.nbytes(); weakref.finalize(st, self._forget, key)
        self.peak = max(self.peak, self.now)
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.from_file.default:                # a weight waiting on disk: a GPU run holds nothing for it
            key = out.untyped_storage()._cdata; self.on_disk.add(key)
            weakref.finalize(out.untyped_storage(), self.on_disk.discard, key); return out
        for x in tree_flatten((args, kwargs, out))[0]:
            if isinstance(x, torch.Tensor): self.see(x)
        return out
'''


CGROUP = Path('/sys/fs/cgroup/memory/open_forgetting_train_memory')

def capped(cap_bytes: int | None):
    "A preexec function that puts the child in a fresh memory cgroup capped at `cap_bytes` (None when not possible or not asked)."
    if not cap_bytes: return None
    try:
        if CGROUP.exists(): CGROUP.rmdir()
        CGROUP.mkdir(); (CGROUP / 'memory.limit_in_bytes').write_text(str(cap_bytes))
    except OSError as e:
        print(f'no memory cgroup ({e}): running without a cap', flush=True); return None
    return lambda: (CGROUP / 'tasks').write_text(str(os.getpid()))

def cgroup_peak() -> float | None:
    try: return int((CGROUP / 'memory.max_usage_in_bytes').read_text()) / 1e9
    except OSError: return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arch', choices=('sd15', 'sd21'), default='sd15')
    p.add_argument('--out', default='/tmp/open_forgetting_rehearsal', help='where the full-size base is built (reused)')
    p.add_argument('--configs', default=','.join(CONFIGS))
    p.add_argument('--steps', type=int, default=2)
    p.add_argument('--resolution', type=int, default=512)
    p.add_argument('--cap-gb', type=float, default=20.0, help='memory cap of each run in GB (1e9 bytes); 0: no cap')
    p.add_argument('--tensor-bytes', action='store_true', help='also the peak bytes of live tensors (what a GPU would hold; slower)')
    p.add_argument('--free-gib', type=float, default=0.0, help="free memory the training's memory rules see, GiB (0: this machine's)")
    a = p.parse_args(argv)
    if a.free_gib < 0: raise SystemExit(f'--free-gib must be >= 0 (0: the free memory of this machine), got {a.free_gib}.')
    sys.path.insert(0, str(Path(__file__).parent))
    from rehearse_full_size import build_full_size, write_concept
    root = Path(a.out).expanduser() / a.arch; root.mkdir(parents=True, exist_ok=True)
    base = build_full_size(a.arch, root / 'base')
    concept = write_concept(root / 'concepts') / 'dog'
    env = {**os.environ, 'OPEN_FORGETTING_HOME': str(root / 'home-memory'), 'HF_HUB_OFFLINE': '1'}
    free = f'{a.free_gib:g} GiB (emulated)' if a.free_gib else "this machine's"
    print(f'train_memory {a.arch}: {a.resolution} px, {a.steps} steps, free memory seen by the rules: {free}; '
          f"torch threads from OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()}", flush=True)
    for name in a.configs.split(','):
        if name not in CONFIGS: raise SystemExit(f'--configs: unknown {name!r}; use some of {sorted(CONFIGS)}.')
        shutil.rmtree(root / f'run-{name}', ignore_errors=True)        # a fresh run every time: a finished one would be reused
        r = subprocess.run([sys.executable, '-c', _TENSOR_BYTES + _CHILD, str(base), str(concept), str(root / f'run-{name}'), str(a.steps),
                            str(a.resolution), json.dumps(CONFIGS[name]), str(int(a.tensor_bytes)), str(a.free_gib)],
                           capture_output=True, text=True, env=env,
                           preexec_fn=capped(int(a.cap_gb * 1e9)))
        peak = cgroup_peak() if a.cap_gb else None
        cap = f'cgroup peak {peak:.2f} GB of a {a.cap_gb:g} GB cap' if peak else 'no cap'
        line = next((l for l in r.stdout.splitlines() if l.startswith('MEMORY ')), None)
        if line is None:
            why = 'killed (out of memory under the cap?)' if r.returncode in (-9, 137) else 'failed'
            print(f'{name:<11} {why}, rc {r.returncode}, {cap}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}', flush=True); continue
        m = json.loads(line[len('MEMORY '):])
        tensors = f"peak live tensors {m['peak_tensor_gib']:.2f} GiB, " if m.get('peak_tensor_gib') is not None else ''
        print(f"{name:<11} done; {tensors}peak anonymous {m['peak_anon_gib'] * 2**30 / 1e9:.2f} GB, peak RSS {m['peak_rss_gib'] * 2**30 / 1e9:.2f} GB, "
              f"{cap}; {m['seconds']:.0f} s; {m['summary']}", flush=True)
    print(f'load average at the end {os.getloadavg()}')


if __name__ == '__main__': main()
