"""The random CNN and the losses, checked against hand computation."""
import itertools

import numpy as np
import pytest
import torch

import utils
from model import (RandomCNN, StyleLoss, _symmetric_product, cheaper_style_form, content_loss,
                   gram_over_time, style_loss_textbook)


def test_random_cnn_shapes_and_frozen_weights():
    net = RandomCNN(seed=0)
    out = net(torch.randn(2, 257, 40))
    assert out.shape == (2, 32, 255, 40)
    assert net.conv.weight.shape == (32, 1, 3, 1)
    assert not any(p.requires_grad for p in net.parameters())
    assert torch.all(net.conv.bias == 0)
    # 3x3 pads only in time: same rows, same frames
    assert RandomCNN(seed=0, kernel=(3, 3))(torch.randn(1, 257, 40)).shape == (1, 32, 255, 40)


def test_random_cnn_draws_the_reference_weights_and_noise():
    """Under torch.manual_seed(s) the reference builds nn.Conv2d, then draws the weights,
    then the initial spectrogram: the same seed must give the same numbers."""
    torch.manual_seed(7)
    torch.nn.Conv2d(1, 32, kernel_size=(3, 1))
    weight = torch.randn(32, 1, 3, 1)
    noise = torch.randn(1, 257, 20) * 1e-3
    before = torch.get_rng_state()
    net = RandomCNN(seed=7)
    assert torch.equal(net.conv.weight, weight)
    assert torch.equal(net.initial_noise((1, 257, 20)), noise)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is untouched
    assert not torch.equal(RandomCNN(seed=8).conv.weight, weight)


def test_random_cnn_seeds_only_the_cpu_generator(monkeypatch):
    """torch.manual_seed would reseed the CUDA generators as well (the start noise and
    Griffin-Lim draw on the CPU, but anything else on the GPU would see its stream
    restarted), and fork_rng(devices=[]) does not restore them: RandomCNN must not call
    it, nor touch a CUDA generator in any other way."""
    torch.manual_seed(7)
    torch.nn.Conv2d(1, 32, kernel_size=(3, 1))
    weight = torch.randn(32, 1, 3, 1)

    def refuse(*_):
        raise AssertionError("a CUDA generator or all devices' generators were seeded")
    for name in ("manual_seed", "seed"):
        monkeypatch.setattr(torch, name, refuse)
    for name in ("manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state",
                 "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    before = torch.get_rng_state()
    assert torch.equal(RandomCNN(seed=7).conv.weight, weight)
    assert torch.equal(torch.get_rng_state(), before)


def test_network_is_conv_then_leaky_relu_by_hand():
    net = RandomCNN(seed=3, channels=2)
    x = torch.randn(1, 5, 4)
    w = net.conv.weight.detach().numpy()[:, 0, :, 0]  # (channels, 3)
    xs = x.numpy()[0]
    out = net(x).numpy()[0]
    for c, h, t in itertools.product(range(2), range(3), range(4)):
        z = sum(w[c, k] * xs[h + k, t] for k in range(3))
        assert out[c, h, t] == pytest.approx(z if z > 0 else 0.2 * z, rel=1e-5, abs=1e-6)


def test_content_loss_by_hand():
    rng = np.random.default_rng(0)
    gen, content = rng.standard_normal((2, 1, 2, 3, 4))
    C, H, W = 2, 3, 4
    expected = 0.0
    for c, h, w in itertools.product(range(C), range(H), range(W)):
        expected += (content[0, c, h, w] - gen[0, c, h, w]) ** 2
    expected /= 4 * C * H * W
    got = content_loss(torch.tensor(gen), torch.tensor(content))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_content_loss_gradient_by_hand():
    """d/d gen of sum((gen - content)^2) / (4 C H W) is 2 (gen - content) / (4 C H W), each
    clip of a batch by its own W and scaled by its own weight."""
    rng = np.random.default_rng(3)
    gen = torch.tensor(rng.standard_normal((2, 2, 3, 4)), requires_grad=True)
    content = torch.tensor(rng.standard_normal((2, 2, 3, 4)))
    frames, weights = torch.tensor([4.0, 3.0]), torch.tensor([1.0, 5.0], dtype=torch.float64)
    (content_loss(gen, content, frames) * weights).sum().backward()
    for b in range(2):
        expected = weights[b] * 2 * (gen[b] - content[b]) / (4 * 2 * 3 * frames[b])
        np.testing.assert_allclose(gen.grad[b].numpy(), expected.detach().numpy(), rtol=1e-12)


def _gram_by_loops(A):
    rows, frames = A.shape
    G = np.zeros((rows, rows))
    for i, j in itertools.product(range(rows), range(rows)):
        G[i, j] = sum(A[i, t] * A[j, t] for t in range(frames))
    return G


def test_style_loss_by_hand():
    """G = F F^T over time with F reshaped (C*H, W); loss = ||G_s - G_g||^2 / (4 C^2 H W),
    with C, H, W of the generated map (the style clip has another length)."""
    rng = np.random.default_rng(1)
    gen = rng.standard_normal((1, 2, 3, 4))
    style = rng.standard_normal((1, 2, 3, 6))
    C, H, W = 2, 3, 4
    diff = _gram_by_loops(style[0].reshape(6, 6)) - _gram_by_loops(gen[0].reshape(6, 4))
    expected = (diff ** 2).sum() / (4 * C * C * H * W)
    g, s = torch.tensor(gen), torch.tensor(style)
    assert style_loss_textbook(g, s).item() == pytest.approx(expected, rel=1e-12)
    for form in ("time", "gram"):
        assert StyleLoss(s, 4, form=form)(g).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kernel", [(3, 1), (3, 3), (3, 5)])
def test_frame_by_frame_product_is_the_reference_convolution(kernel):
    """RandomCNN computes its convolution as one product per frame, in frame-major memory:
    values and input gradients are those of the reference's nn.Conv2d (zero-padded in
    time, then LeakyReLU 0.2), and each frame's C*H features are contiguous."""
    net = RandomCNN(seed=1, kernel=kernel).double()
    x = torch.randn(2, 257, 30, dtype=torch.float64, requires_grad=True)
    ours = net(x)
    theirs = torch.nn.functional.leaky_relu(net.conv(x.unsqueeze(1)), 0.2)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert ours.stride() == (30 * 32 * 255, 255, 1, 32 * 255)
    weights = torch.randn_like(theirs)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("frames", [7, 100, 517])
def test_symmetric_product_in_blocks_is_x_xt(frames):
    """P = X X^T made block row by block row, the blocks above the diagonal mirrored from
    below: the whole product, to rounding (a clip too short for blocks included)."""
    X = torch.randn(2, frames, 300, dtype=torch.float64)
    torch.testing.assert_close(_symmetric_product(X), X @ X.transpose(1, 2), rtol=1e-12,
                               atol=1e-10)


def test_gram_is_over_time():
    features = torch.randn(1, 2, 3, 5, dtype=torch.float64)
    G = gram_over_time(features)
    assert G.shape == (1, 6, 6)
    np.testing.assert_allclose(G[0].numpy(), _gram_by_loops(features[0].reshape(6, 5).numpy()))


@pytest.mark.parametrize("form", ["time", "gram"])
def test_fast_style_loss_equals_8160_gram_on_a_real_clip(form, tone):
    """The project's loss (float32, as the transfer runs it) against the textbook
    8160 x 8160 Grams in float64: value to 1e-5 relative, gradient close too."""
    net = RandomCNN(seed=0)
    content = torch.tensor(utils.log_spectrogram(tone(0.4, f0=120)))[None]
    style = torch.tensor(utils.log_spectrogram(tone(0.6, f0=220, seed=1)))[None]
    gen = (content + 0.1 * torch.randn_like(content)).requires_grad_()
    ours = StyleLoss(net(style), gen.shape[2], form=form)(net(gen))
    (grad_ours,) = torch.autograd.grad(ours.sum(), gen)

    net64 = RandomCNN(seed=0).double()
    gen64 = gen.detach().double().requires_grad_()
    truth = style_loss_textbook(net64(gen64), net64(style.double()))
    (grad_truth,) = torch.autograd.grad(truth.sum(), gen64)

    assert ours.item() == pytest.approx(truth.item(), rel=1e-5)
    err = (grad_ours.double() - grad_truth).norm() / grad_truth.norm()
    assert err < 1e-5


def test_normalized_gram_divides_each_gram_by_its_frames():
    rng = np.random.default_rng(2)
    gen = torch.tensor(rng.standard_normal((1, 2, 3, 4)))
    style = torch.tensor(rng.standard_normal((1, 2, 3, 7)))
    Gg = gram_over_time(gen) / 4
    Gs = gram_over_time(style) / 7
    expected = ((Gg - Gs) ** 2).sum().item() / (4 * 2 * 2 * 3 * 4)
    for form in ("time", "gram"):
        got = StyleLoss(style, 4, form=form, normalize=True)(gen).item()
        assert got == pytest.approx(expected, rel=1e-10)


def test_a_target_multiple_sets_each_clip_against_that_multiple_of_the_style_gram():
    """target a: ||G_g - a G_s||^2 / (4 C^2 H W), per clip of a batch; with a segment's
    share and whole clip as well, the segment's share of a G_s."""
    rng = np.random.default_rng(3)
    gen = torch.tensor(rng.standard_normal((2, 2, 3, 4)))
    style = torch.tensor(rng.standard_normal((1, 2, 3, 7)))
    Gs = gram_over_time(style)
    targets = torch.tensor([0.25, 1.0], dtype=torch.float64)
    expected = [((gram_over_time(gen[b:b + 1]) - a * Gs) ** 2).sum().item() / (4 * 4 * 3 * 4)
                for b, a in enumerate(targets.tolist())]
    share, whole = torch.tensor([0.4, 0.4], dtype=torch.float64), torch.tensor([10.0, 10.0])
    # the reference's loss of a 10-frame clip whose Gram is this segment's over its share
    expected_segment = [((gram_over_time(gen[b:b + 1]) / 0.4 - a * Gs) ** 2).sum().item()
                        / (4 * 4 * 3 * 10) * 0.4 * 10 / 4
                        for b, a in enumerate(targets.tolist())]
    for form in ("time", "gram"):
        loss = StyleLoss(style, 4, form=form)
        assert loss(gen, target=targets).tolist() == pytest.approx(expected, rel=1e-10)
        got = loss(gen, whole=whole, share=share, target=targets).tolist()
        assert got == pytest.approx(expected_segment, rel=1e-10)


def test_automatic_form_is_the_cheaper_one():
    rows = 8160
    for gen, style in [(244, 355), (600, 700), (4000, 4000), (5000, 4000), (31000, 31000)]:
        time_cost = rows * gen * (gen + style)
        gram_cost = rows * rows * gen
        expected = "time" if time_cost < gram_cost else "gram"
        assert cheaper_style_form(gen, style, rows) == expected
    assert cheaper_style_form(244, 355, rows) == "time"
    assert cheaper_style_form(31000, 31000, rows) == "gram"


def test_padded_batch_losses_equal_separate_clips():
    """Zero-padding a shorter clip in time, with its true frame count, changes nothing."""
    net = RandomCNN(seed=0)
    style = net(torch.randn(1, 20, 9))
    short, long = torch.randn(1, 20, 5), torch.randn(1, 20, 8)
    batch = torch.cat([torch.nn.functional.pad(short, (0, 3)), long])
    frames = torch.tensor([5.0, 8.0])
    loss = StyleLoss(style, 8)
    batched = loss(net(batch), frames)
    alone = torch.cat([StyleLoss(style, 5)(net(short)), loss(net(long))])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=0)
