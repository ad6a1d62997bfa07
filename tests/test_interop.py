"""Interop (issue 15): exports read by diffusers' own loaders, load_tuned round trips, adapters in other formats, clear errors."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from open_forgetting.interop import (AdapterMismatchError, ArchitectureMismatchError, export_run, load_tuned, spec_kind,
                                     run_info)
from open_forgetting.models import ModelNotAvailableError, UnsafeWeightsError, save_components, tiny_components, to_pipeline
from open_forgetting.train import customize, load_concept, load_customized, variant_config

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning', 'ignore::FutureWarning')


@pytest.fixture(scope='module')
def setup(tmp_path_factory, small):
    tmp = tmp_path_factory.mktemp('interop')
    folder = tmp / 'concept' / 'toy_subject'; folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3): Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f'{i:02d}.png')
    concept = load_concept(folder, class_noun='toy')
    runs = {m: customize(small, concept, variant_config(m, 'plain', max_steps=2, lambda_pr=0.0, learning_rate=1e-2, progress=False, **kw),
                         out_dir=tmp / f'run_{m}')
            for m, kw in [('dreambooth', dict(train_identifier_embedding=True)), ('custom_diffusion', {}),
                          ('lora', dict(lora_alpha=2, lora_rank=4))]}
    return tmp, runs


_x, _t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 900])


def _out(c, prompt):
    ids = c.tokenizer([prompt] * 2, padding='max_length', max_length=c.tokenizer.model_max_length, truncation=True,
                      return_tensors='pt').input_ids
    with torch.no_grad():
        e = c.text_encoder(ids)[0]
        return c.unet(_x, _t, encoder_hidden_states=e).sample, e


def test_kohya_lora_made_by_diffusers_converter_loads_like_ours(setup, small):
    "An independent route: diffusers' own converter writes the kohya/A1111 names; load_tuned reads them through load_lora_weights."
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    tmp, runs = setup
    ours = load_customized(small, runs['lora'])
    kohya = convert_state_dict_to_kohya({f'unet.{k}': v for k, v in get_peft_model_state_dict(ours.unet).items()})
    kohya = {k: torch.tensor(2.0) if k.endswith('.alpha') else v.contiguous() for k, v in kohya.items()}   # alpha 2, rank 4
    assert any(k.startswith('lora_unet_') for k in kohya)
    save_file(kohya, str(tmp / 'kohya.safetensors'))
    assert spec_kind(tmp / 'kohya.safetensors') == 'lora'
    torch.testing.assert_close(_out(load_tuned(small, tmp / 'kohya.safetensors'), 'a photo of sks toy')[0],
                               _out(ours, 'a photo of sks toy')[0], rtol=0, atol=1e-5)


def test_custom_diffusion_weights_file(setup, small):
    "A Custom Diffusion file in diffusers' key convention (`<attn>.processor.to_k_custom_diffusion.weight`) gives the run's UNet."
    tmp, runs = setup
    trained = load_file(str(runs['custom_diffusion'] / 'trained.safetensors'))
    cd = {k.removeprefix('unet.').replace('.to_k.', '.processor.to_k_custom_diffusion.').replace('.to_v.', '.processor.to_v_custom_diffusion.'): v
          for k, v in trained.items() if k.startswith('unet.')}
    assert cd and all('custom_diffusion' in k for k in cd)
    save_file(cd, str(tmp / 'cd.safetensors'))
    ours = load_customized(small, runs['custom_diffusion'])
    mine = load_tuned(small, tmp / 'cd.safetensors')
    assert torch.equal(_out(mine, 'a photo of toy')[0], _out(ours, 'a photo of toy')[0])
    assert not torch.equal(_out(small, 'a photo of toy')[0], _out(mine, 'a photo of toy')[0])        # the file changed the UNet
    bad = {k: v[:, :3].contiguous() for k, v in cd.items()}
    save_file(bad, str(tmp / 'cd_bad.safetensors'))
    with pytest.raises(AdapterMismatchError, match='no layer of shape'): load_tuned(small, tmp / 'cd_bad.safetensors')


def test_identifier_rows_as_multi_vector_embedding(setup, small):
    "DreamBooth's trained identifier (three tokens in the tiny vocabulary) leaves as `<sks>` with three rows; diffusers expands it."
    tmp, runs = setup
    f = export_run(runs['dreambooth'], tmp / 'ti_db', 'textual_inversion', base=small)
    emb = load_file(str(f))
    assert list(emb) == ['<sks>'] and emb['<sks>'].shape == (len(small.tokenizer.encode('sks', add_special_tokens=False)), 16)
    ti = load_tuned(small, f)
    prompt = to_pipeline(ti).maybe_convert_prompt('a photo of <sks> toy', ti.tokenizer)
    torch.testing.assert_close(_out(ti, prompt)[1], _out(load_customized(small, runs['dreambooth']), 'a photo of sks toy')[1],
                               rtol=0, atol=1e-6)


def test_export_note_and_base_from_folder(setup, small, tmp_path):
    "The base can be given as a folder; the export says what it is (method, token, prompt, base fingerprint)."
    tmp, runs = setup
    base_dir = save_components(small, tmp_path / 'base')
    p = export_run(runs['lora'], tmp_path / 'pipe', 'pipeline', base=base_dir)
    note = __import__('json').loads((p / 'open_forgetting_export.json').read_text())
    assert note['method'] == 'lora' and note['base_fingerprint'] == run_info(runs['lora'])['base_fingerprint'] and 'merged' in note['note']
    with pytest.raises(ModelNotAvailableError, match='pass base='): export_run(runs['lora'], tmp_path / 'x', 'pipeline')


def test_spec_errors(setup, small, tmp_path):
    tmp, runs = setup
    with pytest.raises(ModelNotAvailableError, match='does not exist'): load_tuned(small, tmp_path / 'nope')
    with pytest.raises(ModelNotAvailableError, match='does not exist'): load_tuned(small, tmp_path / 'nope.safetensors')
    for suffix in ('.bin', '.ckpt', '.pt'):
        (tmp_path / f'w{suffix}').write_bytes(b'\x80\x04K\x01.')
        with pytest.raises(UnsafeWeightsError, match='never opened'): load_tuned(small, tmp_path / f'w{suffix}')
    save_file({'a': torch.zeros(2), 'b': torch.zeros(3)}, str(tmp_path / 'odd.safetensors'))
    with pytest.raises(ModelNotAvailableError, match='Cannot tell'): load_tuned(small, tmp_path / 'odd.safetensors')
    other = tiny_components(seed=0, channels=(16, 32), text_dim=32, norm_num_groups=4)
    save_components(other, tmp_path / 'other')
    with pytest.raises(ArchitectureMismatchError, match='block_out_channels'): load_tuned(small, tmp_path / 'other')
    lora = export_run(runs['lora'], tmp_path / 'lora', 'lora', base=small)
    with pytest.raises(AdapterMismatchError, match='size mismatch'): load_tuned(other, lora)
    with pytest.raises(ModelNotAvailableError): load_tuned(small, 'nobody/no-such-model-offline')
