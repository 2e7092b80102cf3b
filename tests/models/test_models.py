import torch

from histosmith.config import unet_config, vq_config
from histosmith.models.quantizer import VectorQuantizer
from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder
from histosmith.models.wrappers import GuidedUNet, LatentDecoder


def _tiny(n_classes=3, tile=32, n_tissues=2):
    vq = vq_config("tiny", n_classes, tile)
    return vq, unet_config("tiny", vq, n_tissues)


def test_vq_shapes_and_heads():
    cfg, _ = _tiny()
    model = VQAutoencoder(cfg).eval()
    x = torch.randn(2, cfg.in_channels, 32, 32)
    out, idx, commit = model(x)
    assert out.image.shape == (2, 3, 32, 32) and out.distance.shape == (2, 1, 32, 32)
    assert out.logits.shape == (2, cfg.n_classes + 1, 32, 32)
    assert idx.shape == (2, cfg.latent_size, cfg.latent_size)
    assert out.image.abs().max() <= 1 and 0 <= out.distance.min() and out.distance.max() <= 1
    assert model.encode(x).shape == (2, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


def test_quantizer_ema_moves_codes_and_restarts_dead_ones():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, decay=0.5, dead_threshold=0.3).train()
    z = torch.randn(4, 2, 4, 4) + 5.0
    vq(z)  # first call initialises the codebook on the data
    assert bool(vq.initialised)
    before = vq.codebook.clone()
    for _ in range(5):
        vq(torch.randn(4, 2, 4, 4) + 5.0)
    assert not torch.equal(before, vq.codebook)
    assert (vq.codebook - 5.0).abs().max() < 5  # every code lives near the data (dead ones were restarted)
    stats = vq.stats()
    assert 1 <= stats["perplexity"] <= 8


def test_quantizer_ema_update_is_the_per_code_running_mean():
    torch.manual_seed(1)
    vq = VectorQuantizer(6, 3, decay=0.8, dead_threshold=0.0, eps=0.0).train()
    vq(torch.randn(2, 3, 4, 4))  # initialise
    count0, sum0 = vq.ema_count.clone(), vq.ema_sum.clone()
    z = torch.randn(2, 3, 4, 4)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    idx = vq.nearest(flat)
    vq(z)
    for code in range(6):  # each code: decayed count + assignments, decayed sum + the vectors assigned to it
        mine = flat[idx == code]
        assert torch.allclose(vq.ema_count[code], 0.8 * count0[code] + 0.2 * len(mine))
        assert torch.allclose(vq.ema_sum[code], 0.8 * sum0[code] + 0.2 * mine.sum(0), atol=1e-6)
    assert torch.allclose(vq.codebook, vq.ema_sum / vq.ema_count[:, None], atol=1e-6)


def test_quantize_snaps_to_codebook():
    vq = VectorQuantizer(4, 3).eval()
    z = torch.randn(1, 3, 2, 2)
    zq = vq.quantize(z)
    flat = zq.permute(0, 2, 3, 1).reshape(-1, 3)
    assert all(any(torch.allclose(v, c) for c in vq.codebook) for v in flat)


def test_guided_unet_is_cfg_of_the_two_branches():
    torch.manual_seed(0)
    _, cfg = _tiny()
    unet = ConditionalUNet(cfg).eval()
    for p in unet.parameters():  # leave zero-init so both branches differ
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randn(3, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    t = torch.tensor([999.0, 500.0, 3.0])
    c = torch.rand(3, cfg.cond_dim)
    g = torch.tensor([1.0, 2.0, 4.5])
    with torch.no_grad():
        cond = unet(x, t, c, torch.ones(3))
        null = unet(x, t, c, torch.zeros(3))
        guided = GuidedUNet(unet)(x, t, c, g)
    expected = null + g[:, None, None, None] * (cond - null)
    assert torch.allclose(guided, expected, atol=1e-5)
    assert not torch.allclose(cond, null)


def test_null_condition_ignores_the_vector():
    _, cfg = _tiny()
    unet = ConditionalUNet(cfg).eval()
    for p in unet.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    t = torch.tensor([10.0, 10.0])
    with torch.no_grad():
        a = unet(x, t, torch.rand(2, cfg.cond_dim), torch.zeros(2))
        b = unet(x, t, torch.rand(2, cfg.cond_dim), torch.zeros(2))
    assert torch.allclose(a, b)


def test_latent_decoder_outputs_probabilities():
    vq_cfg, _ = _tiny()
    dec = LatentDecoder(VQAutoencoder(vq_cfg).eval(), latent_scale=2.0)
    with torch.no_grad():
        image, distance, semantic = dec(torch.randn(2, vq_cfg.latent_channels, 16, 16))
    assert image.shape == (2, 3, 32, 32) and distance.shape == (2, 1, 32, 32)
    assert torch.allclose(semantic.sum(1), torch.ones(2, 32, 32), atol=1e-5)
