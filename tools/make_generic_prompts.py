"""Write data/generic_prompts.txt: the pool of generic regularization prompts for Drift Correction (00_method §3).

The prompts are our own: objects x scenes x styles, chosen to share no word with any DreamBench subject or
class noun (data/concepts/dreambench.csv), so the regularization pool never talks about the concept being
learned. It also avoids the class names of the Table-1 classification sets as far as we know them (CIFAR-10,
STL-10, Flowers-102, Pets, Food-101, Aircraft, the ObjectNet classes), so DC is not regularized on the very
classes whose drift is measured; ImageNet's 1000 classes cover too much to avoid. Deterministic: the same 600 lines on every run (`python tools/make_generic_prompts.py`).
"""
import random
from pathlib import Path

OBJECTS = ['lighthouse', 'canoe', 'piano', 'weathervane', 'sailboat', 'windmill', 'castle', 'bridge', 'tractor',
           'violin', 'bookshelf', 'lantern', 'armchair', 'kite', 'telescope', 'typewriter', 'mushroom', 'cactus',
           'waterfall', 'oak tree', 'hot air balloon', 'steam locomotive', 'wooden cabin', 'hay bale',
           'stone well', 'hourglass', 'chess board', 'globe', 'accordion', 'rowing boat', 'fountain',
           'cathedral', 'pineapple', 'stone archway', 'grand staircase', 'bonsai', 'harbor crane', 'beehive',
           'motorcycle', 'old map']
SCENES = ['on a quiet street at dawn', 'in a misty forest', 'on a sandy shore', 'in a busy market',
          'on a snowy hill', 'in a sunlit room', 'under a starry sky', 'beside a calm lake', 'in a desert at noon',
          'on a rainy evening', 'in an autumn park', 'on a mountain ridge']
STYLES = ['a photo of', 'a watercolor painting of', 'an oil painting of', 'a pencil sketch of',
          'a low-poly 3d render of', 'a vintage postcard of', 'a woodcut print of', 'a close-up photo of',
          'a wide-angle photo of', 'an impressionist painting of']

def article(noun: str) -> str:
    return 'an' if noun[0] in 'aeiou' else 'a'

def generic_prompts(n: int = 600, seed: int = 0) -> list[str]:
    "n distinct prompts 'STYLE a OBJECT SCENE' drawn without replacement from the full product with a fixed seed."
    combos = [(s, o, c) for s in STYLES for o in OBJECTS for c in SCENES]
    picked = random.Random(seed).sample(combos, n)
    return [f'{s} {article(o)} {o} {c}' for s, o, c in picked]

if __name__ == '__main__':
    out = Path(__file__).resolve().parents[1] / 'data' / 'generic_prompts.txt'
    out.write_text('\n'.join(generic_prompts()) + '\n', encoding='utf-8')
    print(f'wrote {out}')
