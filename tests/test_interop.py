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

# ---- a tiny model written in the original single-file layout (the inverse of diffusers' own conversion, written here)
import re

_RESNET = (('norm1', 'in_layers.0'), ('conv1', 'in_layers.2'), ('norm2', 'out_layers.0'), ('conv2', 'out_layers.3'),
           ('time_emb_proj', 'emb_layers.1'), ('conv_shortcut', 'skip_connection'))
_VAE_ATTN = (('group_norm', 'norm'), ('to_q', 'q'), ('to_k', 'k'), ('to_v', 'v'), ('to_out.0', 'proj_out'))


def _sub(rest, table):
    for new, old in table:
        if rest.startswith(new + '.'): return old + rest[len(new):]
    return rest


def _unet_key(k, L, fixed):
    "The original (CompVis) name of a diffusers UNet key, for `layers_per_block` L."
    if k in fixed: return fixed[k]
    m = re.match(r'down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)', k)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f'input_blocks.{b * (L + 1) + j + 1}.' + ('0.' + _sub(rest, _RESNET) if kind == 'resnets' else '1.' + rest)
    m = re.match(r'down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)', k)
    if m: return f'input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}'
    m = re.match(r'mid_block\.(resnets|attentions)\.(\d+)\.(.*)', k)
    if m: return (f'middle_block.{2 * int(m[2])}.' + _sub(m[3], _RESNET)) if m[1] == 'resnets' else f'middle_block.1.{m[3]}'
    m = re.match(r'up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)', k)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f'output_blocks.{b * (L + 1) + j}.' + ('0.' + _sub(rest, _RESNET) if kind == 'resnets' else '1.' + rest)
    raise KeyError(k)


def _vae_key(k, n, fixed, has_attn):
    if k in fixed: return fixed[k]
    m = re.match(r'(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)', k)
    if m: return f'{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace("conv_shortcut", "nin_shortcut")}'
    m = re.match(r'(encoder|decoder)\.mid_block\.attentions\.0\.(.*)', k)
    if m: return f'{m[1]}.mid.attn_1.{_sub(m[2], _VAE_ATTN)}'
    m = re.match(r'encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)', k)
    if m: return f'encoder.down.{m[1]}.block.{m[2]}.{m[3].replace("conv_shortcut", "nin_shortcut")}'
    m = re.match(r'encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)', k)
    if m: return f'encoder.down.{m[1]}.downsample.conv.{m[2]}'
    m = re.match(r'decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)', k)
    if m: return f'decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3].replace("conv_shortcut", "nin_shortcut")}'
    m = re.match(r'decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)', k)
    if m: return f'decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}'
    raise KeyError(k)


def original_layout(comps):
    "The model's weights under the original Stable Diffusion (CompVis / A1111 single-file) names; written here, read by diffusers."
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
    out = {}
    L, unet_fixed = comps.unet.config.layers_per_block, DIFFUSERS_TO_LDM_MAPPING['unet']['layers']
    up_attn = {int(k.split('.')[1]) for k in comps.unet.state_dict() if k.startswith('up_blocks.') and '.attentions.' in k}
    for k, v in comps.unet.state_dict().items():
        m = re.match(r'up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)', k)
        ldm = (f'output_blocks.{int(m[1]) * (L + 1) + L}.{2 if int(m[1]) in up_attn else 1}.conv.{m[2]}' if m
               else _unet_key(k, L, unet_fixed))
        out['model.diffusion_model.' + ldm] = v
    n, vae_fixed = len(comps.vae.config.block_out_channels), DIFFUSERS_TO_LDM_MAPPING['vae']
    for k, v in comps.vae.state_dict().items():
        ldm = _vae_key(k, n, vae_fixed, True)
        out['first_stage_model.' + ldm] = v[:, :, None, None] if '.mid.attn_1.' in ldm and ldm.endswith('weight') and v.ndim == 2 else v
    for k, v in comps.text_encoder.state_dict().items():
        out['cond_stage_model.transformer.' + (k if k.startswith('text_model.') else 'text_model.' + k)] = v
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def test_single_file_checkpoint_loads_through_diffusers(small, tmp_path):
    "Original-layout names written by `original_layout`, read by diffusers' from_single_file with the base folder's configs."
    from open_forgetting.models import load_components
    base_dir = save_components(small, tmp_path / 'base')
    save_file(original_layout(small), str(tmp_path / 'tiny.safetensors'))
    assert spec_kind(tmp_path / 'tiny.safetensors') == 'single_file'
    back = load_components(tmp_path / 'tiny.safetensors', config=base_dir, device='cpu', dtype='fp32')
    for part in ('unet', 'vae', 'text_encoder'):
        a, b = getattr(small, part).state_dict(), getattr(back, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert back.fingerprint() == small.fingerprint()
    based = load_components(base_dir, device='cpu', dtype='fp32')          # load_tuned reads the configs from the base's folder
    assert load_tuned(based, tmp_path / 'tiny.safetensors').fingerprint() == small.fingerprint()
    with pytest.raises(ModelNotAvailableError, match='config='):
        load_tuned(small, tmp_path / 'tiny.safetensors')                   # offline, no folder to read the architecture from
    other = save_components(tiny_components(seed=0, channels=(16, 32), text_dim=32, norm_num_groups=4), tmp_path / 'other')
    with pytest.raises(ModelNotAvailableError, match='same architecture'):
        load_components(tmp_path / 'tiny.safetensors', config=other, device='cpu')


@pytest.fixture(scope='module')
def setup(tmp_path_factory, small):
    tmp = tmp_path_factory.mktemp('interop')
    folder = tmp / 'concept' / 'toy_subject'; folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3): Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f'{i:02d}.png')
    concept = load_concept(folder, class_noun='toy')
    runs = {name: customize(small, concept, variant_config(m, 'plain', max_steps=2, lambda_pr=0.0, learning_rate=1e-2, progress=False, **kw),
                            out_dir=tmp / f'run_{name}')
            for name, m, kw in [('dreambooth', 'dreambooth', dict(train_identifier_embedding=True)), ('custom_diffusion', 'custom_diffusion', {}),
                                ('lora', 'lora', dict(lora_alpha=2, lora_rank=4)), ('lora_ti', 'lora', dict(lora_train_identifier=True))]}
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


def test_pivotal_lora_leaves_as_adapters_plus_identifier_rows(setup, small, tmp_path):
    "A LoRA that trained its identifier's rows exports the LoRA file and `<name>_emb.safetensors`; diffusers, loading both, gives the run's predictions."
    from diffusers import StableDiffusionPipeline
    tmp, runs = setup
    base_dir = save_components(small, tmp_path / 'base')
    f = export_run(runs['lora_ti'], tmp_path / 'out' / 'toy.safetensors', 'lora', base=base_dir)
    emb = tmp_path / 'out' / 'toy_emb.safetensors'
    assert f.is_file() and emb.is_file() and spec_kind(f) == 'lora'
    p = StableDiffusionPipeline.from_pretrained(str(base_dir), safety_checker=None, requires_safety_checker=False)
    p.load_lora_weights(str(f.parent), weight_name=f.name); p.load_textual_inversion(str(emb))
    ours = load_customized(small, runs['lora_ti'])
    theirs = _out(p, p.maybe_convert_prompt('a photo of <sks> toy', p.tokenizer))
    torch.testing.assert_close(theirs[0], _out(ours, 'a photo of sks toy')[0], rtol=0, atol=1e-5)
    assert not torch.allclose(_out(ours, 'a photo of sks toy')[1], _out(small, 'a photo of sks toy')[1], atol=1e-6)   # the rows trained
    note = __import__('json').loads((tmp_path / 'out' / 'toy.open_forgetting_export.json').read_text())
    assert 'toy_emb.safetensors' in note['note'] and "'<sks>'" in note['note']


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


def test_export_to_a_safetensors_file_is_what_diffusers_reads(setup, small, tmp_path, capsys):
    "`open-forgetting export RUN --to NAME.safetensors` writes that one file (diffusers' weight_name); a pipeline to such a name is refused."
    from diffusers import StableDiffusionPipeline
    from open_forgetting.cli import main
    tmp, runs = setup
    base_dir = save_components(small, tmp_path / 'base')
    pipe = lambda: StableDiffusionPipeline.from_pretrained(str(base_dir), safety_checker=None, requires_safety_checker=False)
    lora = tmp_path / 'out' / 'toy-lora.safetensors'
    assert main(['export', str(runs['lora']), '--to', str(lora), '--format', 'lora', '--base', str(base_dir)]) == 0
    assert lora.is_file() and spec_kind(lora) == 'lora'
    p = pipe(); p.load_lora_weights(str(lora.parent), weight_name=lora.name)
    torch.testing.assert_close(_out(p, 'a photo of sks toy')[0], _out(load_customized(small, runs['lora']), 'a photo of sks toy')[0],
                               rtol=0, atol=1e-5)
    assert not torch.allclose(_out(small, 'a photo of sks toy')[0], _out(p, 'a photo of sks toy')[0], atol=1e-5)   # the LoRA acts
    ti = tmp_path / 'out' / 'modifier.safetensors'
    assert main(['export', str(runs['custom_diffusion']), '--to', str(ti), '--format', 'textual_inversion', '--base', str(base_dir)]) == 0
    p = pipe(); p.load_textual_inversion(str(ti))
    torch.testing.assert_close(_out(p, 'a photo of <new1> toy')[1],
                               _out(load_customized(small, runs['custom_diffusion']), 'a photo of <new1> toy')[1], rtol=0, atol=1e-6)
    assert sorted(f.name for f in lora.parent.iterdir()) == ['modifier.open_forgetting_export.json', 'modifier.safetensors',
                                                           'toy-lora.open_forgetting_export.json', 'toy-lora.safetensors']
    folder = export_run(runs['lora'], tmp_path / 'folder', 'lora', base=small)        # a folder: diffusers' default name inside
    assert folder == tmp_path / 'folder' / 'pytorch_lora_weights.safetensors' and load_file(str(folder)).keys() == load_file(str(lora)).keys()
    capsys.readouterr()
    assert main(['export', str(runs['dreambooth']), '--to', str(tmp_path / 'db.safetensors'), '--base', str(base_dir)]) == 2
    assert "'pipeline' export is a folder" in capsys.readouterr().err and not (tmp_path / 'db.safetensors').exists()
