"""The classifier's memory-safe defaults (issue 21): the measured batch and the image groups never exceed what the
device's free memory holds, and capping them never changes a result."""
import numpy as np
import pandas as pd
import pytest
import torch

import open_forgetting.classifier as C
from open_forgetting.classifier import ClassifierConfig, MEMORY_FRACTION, classify, measure_batch_size, auto_batch_size, memory_cap
from open_forgetting.models import tiny_components

torch.set_num_threads(1)
WORDS = ['a', 'photo', 'of', 'cat', 'dog', 'car']
PROMPTS = pd.DataFrame(dict(prompt=['a photo of a cat', 'a photo of a dog', 'a photo of a car'],
                            classname=['cat', 'dog', 'car'], classidx=[0, 1, 2]))


class Blobs(torch.utils.data.Dataset):
    classes = ['cat', 'dog', 'car']
    name, fingerprint = 'blobs-memory', 'blobs-memory-v1'
    def __init__(self, n=6): self.n = n; self.targets = [i % 3 for i in range(n)]
    def __len__(self): return self.n
    def __getitem__(self, i):
        x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 0.4
        x[i % 3] += 0.5
        return x.clamp(0, 1), i % 3


def test_memory_cap_closed_form():
    assert memory_cap(2e9, 24e9) == int(MEMORY_FRACTION * 24e9 // 2e9)
    assert memory_cap(2e9, 1e9) == 1                      # never zero: one item is always tried
    assert memory_cap(0, 1e9) == int(MEMORY_FRACTION * 1e9)


def test_measurement_stops_before_a_batch_that_would_not_fit(monkeypatch):
    "Every call 'holds' 10 MB (fake peak); 40 MB free: batch 16 would need 2·16·1.25 MB > 20 MB, so measuring stops at 16."
    unet = tiny_components(seed=0, words=WORDS).unet
    calls = []
    def fake_peak(fn, device=None): calls.append(1); return fn(), 10_000_000
    monkeypatch.setattr(C, 'peak_memory', fake_peak)
    monkeypatch.setattr(C, 'free_memory', lambda device=None: 40_000_000)
    r = measure_batch_size(unet, (4, 8, 8), (77, unet.config.cross_attention_dim), torch.device('cpu'),
                           max_call_s=1e9, refresh=True)
    assert r['bytes_per_sample'] == 10_000_000 / 8         # the largest per-sample figure seen (at batch 8)
    assert set(r['samples_per_s']) <= {'8', '16'} and len(calls) <= 2
    b = auto_batch_size(unet, (4, 8, 8), (77, unet.config.cross_attention_dim), torch.device('cpu'), measure=False)
    assert b == min(r['batch_size'], memory_cap(10_000_000 / 8, 40_000_000)) <= 16
    monkeypatch.setattr(C, 'free_memory', lambda device=None: 5_000_000)          # less free now: a smaller batch, same record
    assert auto_batch_size(unet, (4, 8, 8), (77, unet.config.cross_attention_dim), torch.device('cpu'), measure=False) == 2


def test_groups_capped_by_memory_give_the_same_results(monkeypatch, capsys):
    model = tiny_components(seed=0, words=WORDS)
    cfg = ClassifierConfig(to_keep=(2, 1), n_samples=(2, 4), batch_size=64)          # 6 first-stage samples: 10 images fit a batch
    free = classify(model, Blobs(), PROMPTS, cfg, seed=3, cache=False, progress=False)
    assert '10 images per group' in capsys.readouterr().out                           # the choice is printed
    monkeypatch.setattr(C, 'free_memory', lambda device=None: 1)                       # no room: one image per VAE call
    monkeypatch.setattr(C, '_REPORTED', set())
    tight = classify(model, Blobs(), PROMPTS, cfg, seed=3, cache=False, progress=False)
    assert '1 images per group' in capsys.readouterr().out
    pd.testing.assert_frame_equal(free.drop(columns='scores'), tight.drop(columns='scores'))
    for a, b in zip(free.scores, tight.scores): np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
