"""OpenClipEncoder builds the network its weights were trained in (activation + preprocessing from open_clip's registry).

Offline: ViT-B-32 (which has an `openai` tag, trained with QuickGELU) gets random weights saved once to a .safetensors
file; `tag@file` takes the tag's recipe and the file's weights, so nothing is downloaded (conftest.py fails any connection)."""
import pytest, torch
from dataclasses import asdict
import open_clip
from open_clip.transform import PreprocessCfg
from open_clip.transformer import QuickGELU
from safetensors.torch import load_file, save_file

from open_forgetting.features import EncoderSpecError, OpenClipEncoder, activations, open_clip_trained_cfg, preprocess
from open_forgetting.models import ModelNotAvailableError


@pytest.fixture(scope='module')
def b32_file(tmp_path_factory):
    "Random ViT-B-32 weights in a .safetensors file (the same tensors fit the GELU and the QuickGELU network)."
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('clip') / 'vit_b32_random.safetensors'
    save_file({k: v.contiguous() for k, v in open_clip.create_model('ViT-B-32', pretrained=None).state_dict().items()}, path)
    return path


def _encoder(model_name, pretrained):
    return OpenClipEncoder(model_name, pretrained, device='cpu', dtype='fp32')


@pytest.fixture(scope='module')
def openai_b32(b32_file):
    "ViT-B-32 declared as OpenAI's weights, read from the file (read-only: shared by the module's tests)."
    return _encoder('ViT-B-32', f'openai@{b32_file}')


def _mlp_activations(model):
    "The activation module of every transformer MLP, found by open_clip's own module layout (`mlp.gelu`)."
    return [m.mlp.gelu for m in model.modules() if hasattr(m, 'mlp') and hasattr(m.mlp, 'gelu')]


def test_openai_weights_from_a_file_run_through_quickgelu(b32_file, openai_b32):
    enc = openai_b32
    acts = _mlp_activations(enc.model)
    assert len(acts) == 24 and all(isinstance(a, QuickGELU) for a in acts)          # 12 vision + 12 text blocks
    assert activations(enc.model) == {'QuickGELU'}
    assert enc.name == f'open_clip:ViT-B-32:openai@{b32_file.name}'
    state = load_file(b32_file)                                                      # the file's weights, not random ones
    torch.testing.assert_close(enc.model.visual.conv1.weight, state['visual.conv1.weight'])
    # the same tensors in the GELU network (your own weights, declared GELU by the plain name) embed differently
    gelu = _encoder('ViT-B-32', f'custom@{b32_file}')
    assert {type(a) for a in _mlp_activations(gelu.model)} == {torch.nn.GELU}
    images = torch.rand(2, 3, 64, 64)
    assert not torch.allclose(enc.encode_image(images), gelu.encode_image(images), atol=1e-4)


def test_custom_weights_take_the_activation_the_name_declares(b32_file):
    enc = _encoder('ViT-B-32-quickgelu', f'custom@{b32_file}')
    assert all(isinstance(a, QuickGELU) for a in _mlp_activations(enc.model))
    defaults = asdict(PreprocessCfg())                                                # open_clip's own defaults
    assert {k: enc.preprocess_cfg[k] for k in ('mean', 'std', 'interpolation', 'resize_mode')} == \
           {k: defaults[k] for k in ('mean', 'std', 'interpolation', 'resize_mode')}


def test_preprocessing_is_the_tags_registry_entry(b32_file, openai_b32, monkeypatch):
    enc = openai_b32
    entry = open_clip.get_pretrained_cfg('ViT-B-32', 'openai')
    assert enc.preprocess_cfg == dict(size=(224, 224), **{k: entry[k] for k in ('mean', 'std', 'interpolation', 'resize_mode')})
    # a tag whose run used other preprocessing (as CLIPA's: ImageNet mean/std, bilinear, squash) gets exactly that
    other = dict(entry, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation='bilinear', resize_mode='squash')
    other.pop('quick_gelu')
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED['ViT-B-32'], 'of_test', other)
    enc = _encoder('ViT-B-32', f'of_test@{b32_file}')
    assert enc.preprocess_cfg == dict(size=(224, 224), **{k: other[k] for k in ('mean', 'std', 'interpolation', 'resize_mode')})
    assert activations(enc.model) == {'GELU'}                                        # that run used GELU


def test_name_and_weights_that_disagree_are_an_error(b32_file, monkeypatch):
    # a -quickgelu name with weights trained with GELU (checked before the file is read)
    with pytest.raises(EncoderSpecError, match=r"'ViT-B-32-quickgelu' is built with QuickGELU.*'laion2b_s34b_b79k'.*GELU.*Use model 'ViT-B-32'"):
        _encoder('ViT-B-32-quickgelu', f'laion2b_s34b_b79k@{b32_file}')
    # vice versa: a config that fixes GELU explicitly, with OpenAI's QuickGELU weights
    cfg = dict(open_clip.get_model_config('ViT-B-32'), quick_gelu=False)
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, 'ViT-B-32', cfg)
    with pytest.raises(EncoderSpecError, match=r"'ViT-B-32' is built with GELU.*'openai'.*QuickGELU.*Use model 'ViT-B-32-quickgelu'"):
        _encoder('ViT-B-32', f'openai@{b32_file}')
    assert open_clip_trained_cfg('ViT-L-14', 'openai')['quick_gelu']                  # the studies' encoder: QuickGELU


def test_a_bare_file_must_declare_its_weights(b32_file):
    with pytest.raises(EncoderSpecError) as e:
        _encoder('ViT-B-32', str(b32_file))
    assert f"pretrained='openai@{b32_file}'" in str(e.value) and f"pretrained='custom@{b32_file}'" in str(e.value)
    assert "'ViT-L-14-quickgelu'" in str(e.value)
    with pytest.raises(EncoderSpecError, match='is a bare weights file'): _encoder('ViT-B-32', b32_file)   # a Path too


def test_unknown_tags_fail_before_any_download():
    with pytest.raises(EncoderSpecError, match=r"'opena1' is not an open_clip pretrained tag of model 'ViT-B-32'.*openai"):
        _encoder('ViT-B-32', 'opena1')
    with pytest.raises(EncoderSpecError, match="custom@"): _encoder('ViT-B-32', 'custom')
    with pytest.raises(ModelNotAvailableError, match="pretrained='openai@/path"): _encoder('ViT-B-32', 'openai')   # offline


@pytest.mark.parametrize('resize_mode,interpolation', [('shortest', 'bicubic'), ('squash', 'bilinear'), ('longest', 'bicubic')])
@pytest.mark.parametrize('size', [32, (40, 24), (24, 40)])
def test_preprocess_matches_open_clips_own_transform(resize_mode, interpolation, size):
    "Our batched tensor route against open_clip's eval transform on a PIL image: equal up to PIL's uint8 rounding."
    from PIL import Image
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 6), size=(60, 90), mode='bilinear', align_corners=False)
    u8 = (smooth * 255).round().to(torch.uint8)
    theirs = open_clip.image_transform(size, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode=resize_mode,
                                       interpolation=interpolation)(Image.fromarray(u8[0].permute(1, 2, 0).numpy()))
    ours = preprocess(u8, size, (0.5,) * 3, (0.5,) * 3, interpolation=interpolation, resize_mode=resize_mode)[0]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 0.02                                        # 2/255 after normalising by std 0.5
