"""Appearance, diversity and fidelity metrics (issue 5): closed forms, independent routes, invariances, clear errors."""
import numpy as np
import pandas as pd
import pytest
import torch

from open_forgetting.features import (DinoEncoder, EncoderFeatures, ImageTextEncoder, InceptionFeatures, OpenClipEncoder,
                                      inception_available, kid_feature_module, tiny_dino, tiny_open_clip)
from open_forgetting.generate import GenerationSettings, generate, load_images, save_png
from open_forgetting.metrics import (bin_centres, chroma_histogram, chromaticity, chromaticity_coords, clip_i_curves,
                                     clip_image_similarity, clip_t_conventions, color_drift, color_drift_index, diversity,
                                     emd, fidelity, rgb_to_ab, grayscale_u8, histogram_distance, hellinger, js_distance, kid, kid_table,
                                     kid_interval, mmd2_unbiased,
                                     lpips_available, mean_pairwise_cosine_distance, mean_pairwise_lpips, pair_manifest,
                                     texture_drift, texture_features, texture_table, vendi_score)
from open_forgetting.models import ModelNotAvailableError, tiny_components


def _rand(n, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module')
def clip():
    return tiny_open_clip()


# ---------------------------------------------------------------- EMD and CDI
@pytest.mark.parametrize('i,j', [((0, 0), (31, 31)), ((3, 4), (10, 20)), ((7, 7), (7, 8)), ((12, 5), (12, 5))])
def test_emd_of_one_bin_histograms_is_the_ground_distance(i, j):
    p, q = torch.zeros(32, 32), torch.zeros(32, 32)
    p[i] = 1; q[j] = 1
    c = bin_centres('rg', 32)
    assert emd(p, q, c) == pytest.approx(np.hypot(i[0] - j[0], i[1] - j[1]) / 32, abs=1e-12)


def test_emd_on_one_row_equals_1d_wasserstein():
    "Independent route: mass on one row of bins is a 1-D problem, where scipy's closed-form W1 applies."
    from scipy.stats import wasserstein_distance
    rng = np.random.default_rng(0)
    p, q = torch.zeros(32, 32, dtype=torch.float64), torch.zeros(32, 32, dtype=torch.float64)
    p[5] = torch.from_numpy(rng.random(32) * (rng.random(32) > 0.5)); q[5] = torch.from_numpy(rng.random(32))
    centres = (np.arange(32) + 0.5) / 32
    w1 = wasserstein_distance(centres, centres, p[5].numpy(), q[5].numpy())
    assert emd(p, q, bin_centres('rg', 32)) == pytest.approx(w1, abs=1e-9)


def test_js_and_hellinger_closed_forms():
    p = torch.tensor([0.5, 0.5, 0.0]); q = torch.tensor([0.0, 0.5, 0.5])
    # JS divergence (base 2) of these = 0.5; Hellinger: sqrt(1 - 0.5)
    assert js_distance(p, q) == pytest.approx(np.sqrt(0.5), abs=1e-12)
    assert hellinger(p, q) == pytest.approx(np.sqrt(0.5), abs=1e-12)
    assert js_distance(p, p) == pytest.approx(0, abs=1e-7) and hellinger(p, p) == pytest.approx(0, abs=1e-7)


def test_cdi_self_zero_symmetric_and_options():
    a, b = _rand(5, 32, seed=1), _rand(5, 32, seed=2)
    warm = (a * torch.tensor([1.0, 0.6, 0.4]).view(3, 1, 1)).clamp(0, 1)
    assert color_drift_index(a, a) == 0.0
    assert color_drift_index(a, warm) == pytest.approx(color_drift_index(warm, a), abs=1e-12)
    assert color_drift_index(a, warm) > 3 * color_drift_index(a, b)
    for space in ('rg', 'ab'):
        for dist in ('emd', 'js', 'hellinger'):
            assert color_drift_index(a, a, space, dist) == pytest.approx(0, abs=1e-6)
            assert color_drift_index(a, warm, space, dist) == pytest.approx(color_drift_index(warm, a, space, dist), abs=1e-9)
            assert color_drift_index(a, warm, space, dist) > 0


def test_cdi_ignores_brightness_and_drops_black_pixels():
    a = _rand(3, seed=3) * 0.5 + 0.25
    # rg chromaticity is invariant to scaling all channels; black pixels are dropped, not counted
    assert color_drift_index(a, a * 0.8) == pytest.approx(0, abs=1e-3)
    with_black = torch.cat([a, torch.zeros(2, 3, 16, 16)])
    assert torch.equal(chroma_histogram(with_black), chroma_histogram(a))
    px = torch.tensor([0.6, 0.3, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(chromaticity_coords(px), torch.tensor([[0.5, 0.25]]))
    assert chromaticity_coords(torch.full((1, 3, 1, 1), 0.04)).shape == (0, 2)


def test_ab_conversion_matches_skimage_and_histograms_match_histogramdd():
    from skimage.color import rgb2lab
    x = torch.rand(2, 3, 11, 13, generator=torch.Generator().manual_seed(4))
    x[0, :, 0, 0] = 1.0; x[0, :, 0, 1] = 0.0; x[1, :, 2, 2] = torch.tensor([1.0, 0.0, 0.0])   # white, black, pure red
    ref = torch.from_numpy(rgb2lab(x.permute(0, 2, 3, 1).double().numpy())[..., 1:]).float()
    torch.testing.assert_close(rgb_to_ab(x).permute(0, 2, 3, 1), ref, atol=2e-3, rtol=0)
    for space, (lo, hi) in (('rg', (0.0, 1.0)), ('ab', (-128.0, 128.0))):
        c = chromaticity_coords(x, space).double()
        h = torch.histogramdd(c, bins=[32, 32], range=[lo, hi, lo, hi]).hist
        torch.testing.assert_close(chroma_histogram(x, space), h / h.sum())


def test_cdi_streams_uint8_and_files_identically(tmp_path):
    x8 = (torch.rand(4, 3, 16, 16) * 255).round().to(torch.uint8)
    paths = [str(save_png(im.float() / 255, tmp_path / f'{i}.png')) for i, im in enumerate(x8)]
    h = chroma_histogram(x8.float() / 255)
    assert torch.equal(chroma_histogram(x8), h) and torch.equal(chroma_histogram(paths, batch_size=3), h)


def test_cdi_bad_input_clear_errors():
    a = _rand(2)
    with pytest.raises(ValueError, match="space='hsv'"): color_drift_index(a, a, space='hsv')
    with pytest.raises(ValueError, match="distance='kl'"): color_drift_index(a, a, distance='kl')
    with pytest.raises(ValueError, match='empty'): color_drift_index(a, torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match='empty'): color_drift_index([], a)
    with pytest.raises(ValueError, match='near-black'): color_drift_index(a, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'): color_drift_index(a, torch.rand(2, 4, 8, 8))


def test_chromaticity_plot_data():
    a = _rand(2)
    df = chromaticity({'base': a, 'red': (a * torch.tensor([1.0, 0.5, 0.5]).view(3, 1, 1))}, n=50)
    assert list(df.columns) == ['model', 'r', 'g'] and df.groupby('model').size().tolist() == [50, 50]
    assert df[df.model == 'red'].r.mean() > df[df.model == 'base'].r.mean()
    assert list(chromaticity({'x': a}, n=10, space='ab').columns) == ['model', 'a', 'b']


# ---------------------------------------------------------------- Vendi, pairwise, KID
def test_vendi_closed_forms():
    v = torch.randn(1, 8)
    assert vendi_score(v.repeat(6, 1)) == pytest.approx(1.0, abs=1e-6)
    q, _ = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64))
    assert vendi_score(q.T * torch.tensor([[1.0], [2.0], [3.0], [0.5]], dtype=torch.float64)) == pytest.approx(4.0, abs=1e-6)
    # two identical groups of orthogonal vectors: 2 effective samples
    assert vendi_score(torch.eye(2).repeat(3, 1)) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match='n >= 1'): vendi_score(torch.zeros(0, 3))


def test_mean_pairwise_cosine_distance():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine_distance(x) == pytest.approx((1 + 2 + 1) / 3)
    with pytest.raises(ValueError, match='at least 2'): mean_pairwise_cosine_distance(x[:1])


def test_kid_self_zero_grows_with_shift_and_subset_cap():
    f = torch.randn(200, 32, generator=torch.Generator().manual_seed(0)) / 32 ** 0.5
    self_kid = kid(f, f, subset_size=100, subsets=20)[0]
    shifted = [kid(f, f + s, subset_size=100, subsets=20)[0] for s in (0.1, 0.25, 0.5)]
    assert abs(self_kid) < 0.05 * shifted[1] and shifted[0] < shifted[1] < shifted[2]
    assert kid(f[:20], f[:30] + 1, subsets=5) == kid(f[:20], f[:30] + 1, subset_size=20, subsets=5)
    assert kid(f[:50], f[:50] + 0.1, subsets=5, seed=3) == kid(f[:50], f[:50] + 0.1, subsets=5, seed=3)  # seeded: reproducible
    with pytest.raises(ValueError, match='at least 2'): kid(f[:1], f)
    with pytest.raises(ValueError, match=r'\(N, D\)'): kid(f[0], f)


def test_kid_interval_covers_the_truth():
    "Simulation: the 95% interval covers the population KID (from 3000-sample sets) in most of 60 draws of 100 features."
    g = torch.Generator().manual_seed(5)
    truth = mmd2_unbiased(torch.randn(3000, 8, generator=g), torch.randn(3000, 8, generator=g) + 0.5)
    hits = zero_hits = 0
    for r in range(60):
        a, b = torch.randn(100, 8, generator=g), torch.randn(100, 8, generator=g)
        iv = kid_interval(a, b + 0.5, subsets=60, seed=r)
        hits += iv['kid_lo'] <= truth <= iv['kid_hi']
        same = kid_interval(a[:40], b[:40], subsets=60, seed=r)            # one distribution: the truth is 0
        zero_hits += same['kid_lo'] <= 0 <= same['kid_hi']
    assert hits >= 51 and zero_hits >= 54, (hits, zero_hits)             # nominal 57 of 60; binomial slack


def test_kid_feature_modules(clip):
    fm = kid_feature_module(clip, prefer_inception=False)
    a = _rand(3)
    assert torch.equal(fm(a), clip.encode_image(a))
    assert len(kid(a, a.flip(-1), feature=fm, subsets=5)) == 2
    if not inception_available():
        with pytest.raises(ModelNotAvailableError, match='Inception'): InceptionFeatures()
        assert isinstance(kid_feature_module(clip), EncoderFeatures)


def test_lpips_only_when_available():
    if lpips_available(): pytest.skip('LPIPS weights present here')
    with pytest.raises(ModelNotAvailableError, match='LPIPS'): mean_pairwise_lpips(_rand(2))


# ---------------------------------------------------------------- texture
def test_texture_features_and_drift():
    from skimage.color import rgb2gray
    from skimage.feature import local_binary_pattern
    a = _rand(4, 24, seed=5)
    g = grayscale_u8(a)
    ref = (rgb2gray(a[0].permute(1, 2, 0).numpy()) * 255).round()
    assert np.abs(g[0].astype(int) - ref).max() <= 1
    tf = texture_features(a)
    lbp = local_binary_pattern(g[1], 8, 1, method='uniform')
    assert np.allclose(tf.filter(like='lbp_').iloc[1].values, np.bincount(lbp.astype(int).ravel(), minlength=10) / lbp.size)
    assert texture_drift(a, a)['texture_drift'] == 0.0 and texture_drift(a, a)['glcm_contrast'] == 0.0
    b = _rand(4, 24, seed=6)
    blur = torch.nn.functional.avg_pool2d(a, 3, 1, 1)
    d_blur, d_b = texture_drift(a, blur), texture_drift(a, b)
    assert d_blur['texture_drift'] > 3 * d_b['texture_drift'] and d_blur['glcm_contrast'] > d_b['glcm_contrast']
    assert texture_drift(a, blur)['texture_drift'] == pytest.approx(texture_drift(blur, a)['texture_drift'])
    with pytest.raises(ValueError, match='levels'): texture_features(a, levels=1)


# ---------------------------------------------------------------- encoders
def test_encoders_follow_the_interface_and_offline_errors(clip):
    dino = tiny_dino()
    for enc in (clip, dino): assert isinstance(enc, ImageTextEncoder)
    with pytest.raises(ModelNotAvailableError, match=r"ViT-B-32.*pretrained='/path"):
        OpenClipEncoder('ViT-B-32', pretrained='openai')
    with pytest.raises(ModelNotAvailableError, match='dino-vits16'): DinoEncoder('facebook/dino-vits16')
    with pytest.raises(TypeError, match='image-only'): dino.encode_text(['x'])
    with pytest.raises(TypeError, match='single string'): clip.encode_text('a dog')


# ---------------------------------------------------------------- tidy tables on real generations
@pytest.fixture(scope='module')
def manifest(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp('gen')
    st = GenerationSettings(steps=2, batch_size=8)
    prompts = ['a photo of', 'a blurry photo of']
    base = generate({'base': tiny}, prompts, [0, 1, 2, 3, 4, 5], st, root=root, progress=False)   # seeds A = 0..2, B = 3..5
    other = generate({'db': tiny_components(seed=2)}, prompts, [0, 1, 2], st, root=root, progress=False)
    return pd.concat([base, other], ignore_index=True)


def test_pairing_and_tables(manifest, clip):
    pairs = pair_manifest(manifest)
    assert set(pairs.model) == {'db', 'control'} and len(pairs) == 2 * 3 + 2 * 3
    ctrl = pairs[pairs.model == 'control']
    assert (ctrl.seed >= 3).all() and (ctrl.ref_seed <= 2).all()
    assert (pairs[pairs.model == 'db'].seed == pairs[pairs.model == 'db'].ref_seed).all()

    sim = clip_image_similarity(pairs, clip)
    assert sim.clip_i.between(-1, 1).all()
    same = pairs.assign(path=pairs.ref_path)
    assert np.allclose(clip_image_similarity(same, clip).clip_i, 1.0)          # CLIP-I of an image with itself is 1
    cur = clip_i_curves(sim)
    assert len(cur) == 4 and (cur.groupby('model')['clip_i'].apply(lambda s: s.is_monotonic_decreasing)).all()

    cdi = color_drift(pairs)
    assert len(cdi) == 4 and set(cdi.model) == {'db', 'control'} and (cdi.cdi >= 0).all()
    g = pairs[(pairs.model == 'db') & (pairs.prompt == 'a photo of')]
    assert cdi[(cdi.model == 'db') & (cdi.prompt == 'a photo of')].cdi.item() == pytest.approx(
        color_drift_index(load_images(g.ref_path), load_images(g.path)))
    assert len(color_drift(pairs, by=('model',))) == 2

    tex = texture_table(pairs)
    assert len(tex) == 4 and {'glcm_contrast', 'lbp_js', 'texture_drift'} <= set(tex.columns)

    k = kid_table(pairs, EncoderFeatures(clip), subset_size=50, subsets=5)
    assert len(k) == 4 and k.kid.notna().all() and (k.kid_lo <= k.kid).all() and (k.kid <= k.kid_hi).all()

    div = diversity(manifest, clip, lpips=False)
    assert len(div) == 4 and div.vendi.between(1, 6 + 1e-9).all() and div.pairwise_cosine_distance.notna().all()


def test_pairing_errors(manifest):
    with pytest.raises(ValueError, match="'sd15'"): pair_manifest(manifest, base='sd15')
    with pytest.raises(ValueError, match='disjoint'): pair_manifest(manifest, control_seeds=[2, 3, 4])
    with pytest.raises(ValueError, match='columns'): pair_manifest(manifest.drop(columns='path'))
    with pytest.raises(ValueError, match='several images'): pair_manifest(pd.concat([manifest, manifest.iloc[:1]]))
    with pytest.warns(UserWarning, match='control'):
        pair_manifest(manifest[manifest.seed <= 2])


def test_fidelity(manifest, clip):
    dino = tiny_dino()
    gen = manifest[manifest.model == 'db']
    real = load_images(manifest[(manifest.model == 'base') & (manifest.seed == 0)].path)
    fid = fidelity(gen, real, clip, dino, texts=lambda p: p + ' a dog')
    assert len(fid) == 1 and {'dino', 'clip_i', 'clip_t_raw', 'clip_t_cd', 'clip_t_tm'} <= set(fid.columns)
    ig = clip.encode_image(load_images(gen.path)); ir = clip.encode_image(real)
    cos = torch.nn.functional.cosine_similarity(ig[:, None].double(), ir[None].double(), dim=-1)
    assert fid.clip_i.item() == pytest.approx(cos.mean().item(), abs=1e-6)      # all-pairs mean, by another route
    t = clip.encode_text([p + ' a dog' for p in gen.prompt])
    raw = torch.nn.functional.cosine_similarity(ig.double(), t.double(), dim=-1)
    assert fid.clip_t_raw.item() == pytest.approx(raw.mean().item(), abs=1e-6)
    assert fid.clip_t_cd.item() == pytest.approx((2.5 * raw.clamp_min(0)).mean().item(), abs=1e-6)
    assert fid.clip_t_tm.item() == pytest.approx(40 * fid.clip_t_cd.item(), rel=1e-9)
    with pytest.raises(ValueError, match='concept'): fidelity(gen, {'dog': real}, clip)
    by_concept = fidelity(gen.assign(concept='dog'), {'dog': real}, clip)
    assert by_concept.clip_i.item() == pytest.approx(fid.clip_i.item(), abs=1e-9)
    assert clip_t_conventions(torch.tensor([-0.5]))['clip_t_cd'] == 0.0
