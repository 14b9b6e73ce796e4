"""Long clips: segments and their seams, the style's statistics in blocks and of bounded
rank, the default stopping rule, Griffin-Lim in chunks, and the memory estimate."""

import numpy as np
import pytest
import soundfile as sf
import torch

import model
import train
import utils
import vocoder
from conftest import optimise
from model import RandomCNN, StyleGram, StyleLoss, style_loss_textbook

CPU = torch.device("cpu")


def _args(*argv):
    args = train.build_parser().parse_args(list(argv))
    train.settle_defaults(args)
    return args


# ------------------------------------------------------------------------------ segments

@pytest.mark.parametrize("frames, length, overlap", [(1000, 200, 20), (201, 200, 20),
                                                     (517, 100, 50), (3001, 517, 43),
                                                     (1218, 517, 43), (1724, 517, 43)])
def test_segments_cover_the_clip_evenly(frames, length, overlap):
    plain = utils.segment_bounds(frames, length, overlap)
    cheaper = utils.optimisation_segments(frames, length, overlap)
    for bounds in (plain, cheaper):
        assert bounds[0][0] == 0 and bounds[-1][1] == frames
        size = bounds[0][1] - bounds[0][0]
        assert all(stop - start == size for start, stop in bounds) and size >= length
        shared = [a[1] - b[0] for a, b in zip(bounds, bounds[1:])]
        assert min(shared) >= overlap and max(shared) - min(shared) <= 1  # evenly spaced
    # the plain plan: the fewest of `length` frames (one fewer could not keep the overlap)
    fewest = int(np.ceil((frames - overlap) / (length - overlap)))
    assert len(plain) == fewest and plain[0][1] == length
    # the optimisation's: the same, or one fewer (two at least), each as long as covers the
    # clip, where the sum of the squared lengths is no larger
    if cheaper != plain:
        size = cheaper[0][1]
        assert len(cheaper) == fewest - 1 >= 2 and len(cheaper) * size ** 2 <= fewest * length ** 2
        assert len(cheaper) * (size - 1) - (len(cheaper) - 1) * overlap < frames  # no shorter
    assert utils.segment_bounds(150, 200, 20) == utils.optimisation_segments(150, 200, 20) == [
        (0, 150)]


def test_a_clip_just_over_two_segments_is_cut_in_two_longer_ones():
    """boy.wav twice (1218 frames) in 3 s segments: 3 of 517 frames would overlap by 166
    each; 2 of 631 cover it with less in the style loss's products (796 k against 802 k
    frames squared). The music's 1724 frames stay in 4 of 517: 3 would cost more."""
    assert utils.optimisation_segments(1218, 517, 43) == [(0, 631), (587, 1218)]
    assert [b - a for a, b in utils.optimisation_segments(1724, 517, 43)] == [517] * 4
    args = _args()
    assert train.segment_plan(args, [1218]) == [[(0, 631), (587, 1218)]]


def test_a_clip_up_to_one_and_a_half_segments_is_optimised_whole():
    """3 s segments are 517 frames: a clip of 775 (1.5 segments) stays whole, where two
    segments would overlap by 259 of their 517 frames; one of 776 is cut in two."""
    args = _args()
    assert round(args.segment * utils.SAMPLE_RATE / utils.HOP) == 517
    assert train.segment_plan(args, [517, 775]) == [[(0, 517)], [(0, 775)]]
    assert train.segment_plan(args, [776]) == [[(0, 517), (259, 776)]]
    assert train.segment_plan(_args("-exact"), [5000]) == [[(0, 5000)]]


@pytest.mark.parametrize("frames, length, overlap", [
    (1000, 200, 40),
    (992, 517, 43),  # 3 s segments of a 5.8 s clip: the first and third overlap
    (345, 86, 43)])  # overlaps of half a segment, spaced closer: three meet in places
def test_crossfade_weights_sum_to_one_and_hand_over_smoothly(frames, length, overlap):
    bounds = utils.segment_bounds(frames, length, overlap)
    weights = utils.crossfade_weights(bounds)
    total = np.zeros(frames)
    for (start, stop), w in zip(bounds, weights):
        total[start:stop] += w
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)
    steps = [np.abs(np.diff(w)).max() for w in weights]
    assert max(steps) < 2 * np.pi / overlap  # a raised cosine over the overlap: no jump
    assert weights[0][0] == 1 and weights[-1][-1] == 1


def test_stitching_slices_of_one_spectrogram_gives_it_back(tone):
    spec = utils.log_spectrogram(tone(2.0))
    bounds = utils.segment_bounds(spec.shape[1], 120, 30)
    stitched = train.stitch([spec[:, a:b] for a, b in bounds], bounds)
    np.testing.assert_allclose(stitched, spec, rtol=1e-5, atol=1e-6)
    # Ctrl-C inside the clip: it ends where the last segment reached ends
    part = train.stitch([spec[:, a:b] for a, b in bounds[:2]], bounds[:2])
    np.testing.assert_allclose(part, spec[:, :bounds[1][1]], rtol=1e-5, atol=1e-6)


def test_joined_history_weights_segments_by_share_and_holds_the_last_value():
    first = [(1, 4.0, 2.0), (10, 2.0, 1.0)]
    second = [(1, 8.0, 4.0), (10, 6.0, 3.0), (20, 5.0, 2.0)]
    joined = train.joined_history([first, second], [0.25, 0.75])
    assert [s for s, _, _ in joined] == [1, 10, 20]
    assert joined[0][1:] == pytest.approx((0.25 * 4 + 0.75 * 8, 0.25 * 2 + 0.75 * 4))
    assert joined[2][1:] == pytest.approx((0.25 * 2 + 0.75 * 5, 0.25 * 1 + 0.75 * 2))


def test_a_segment_is_scored_as_a_clip_of_copies_of_it():
    """With `whole` = 3 x its frames, a segment's style loss is the reference's loss of
    the clip made of three copies of it: its Gram per frame against the style's over the
    whole clip's frames."""
    rng = np.random.default_rng(4)
    segment = torch.tensor(rng.standard_normal((1, 2, 3, 5)))
    style = torch.tensor(rng.standard_normal((1, 2, 3, 11)))
    copies = torch.cat([segment] * 3, dim=3)
    expected = style_loss_textbook(copies, style).item()
    for form in ("time", "gram"):
        got = StyleLoss(style, 5, form=form)(segment, torch.tensor([5.0]), torch.tensor([15.0]))
        assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.fixture
def pair(tmp_path, tone):
    content, style = tmp_path / "speech.wav", tmp_path / "voice.wav"
    sf.write(content, tone(2.0, f0=110), 22050)
    sf.write(style, tone(1.2, f0=230, seed=1), 22050)
    return str(content), str(style)


def test_one_segment_clips_are_bit_identical_to_exact(pair, tone):
    """A clip that fits in one segment, against a style of no more frames than the rank,
    is optimised exactly as -exact (today's whole-clip objective) does."""
    content, style = pair
    y, s = utils.load_audio(content), utils.load_audio(style)
    common = ["-content", content, "-style", style, "-epochs", "12", "-segment", "5"]
    default, _, _ = optimise(_args(*common), [y], s)
    exact, _, _ = optimise(_args(*common, "-exact"), [y], s)
    assert np.array_equal(default[0], exact[0])


def test_no_iterations_over_segments_gives_the_start_back(pair):
    """-epochs 0 over a clip of several segments, two passes: nothing is optimised, and the
    stitched result is the content it started from (it had failed on an empty history)."""
    content, style = pair
    y, s = utils.load_audio(content), utils.load_audio(style)
    args = _args("-content", content, "-style", style, "-epochs", "0", "-segment", "0.5",
                 "-init", "content")
    generated, runs, _ = optimise(args, [y], s)
    np.testing.assert_allclose(generated[0], utils.log_spectrogram(y), atol=1e-6)
    assert runs[0][1] == [[]]


def test_segmented_result_joins_without_jumps_at_the_seams(pair, tmp_path):
    """Segments of 0.5 s overlapping by 0.15 s: the generated loudness moves across each
    seam no more than it moves within segments, and the result keeps the clip's length."""
    content, style = pair
    out = tmp_path / "out"
    assert train.main(["-content", content, "-style", style, "-segment", "0.5",
                       "-overlap", "0.15", "-epochs", "40", "-save_spectrogram",
                       "-griffin_lim_iters", "8", "-output", str(out)]) == 0
    spec = np.load(out / "speech_as_voice_spectrogram.npy")
    frames = utils.frame_count(len(utils.load_audio(content)))
    assert spec.shape[1] == frames
    level = 10 * np.log10((utils.magnitude(spec) ** 2).sum(axis=0) + 1e-10)
    jumps = np.abs(np.diff(level))
    length = round(0.5 * utils.SAMPLE_RATE / utils.HOP)
    bounds = train.segment_plan(_args("-segment", "0.5", "-overlap", "0.15"), [frames])[0]
    assert len(bounds) >= 4
    seams = np.zeros(len(jumps), bool)
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        seams[start - 1:stop] = True  # every step inside an overlap, and into and out of it
    assert jumps[seams].max() <= 1.5 * jumps[~seams].max() + 0.5


def test_lbfgs_batch_gives_each_clip_what_it_gets_alone(pair, tmp_path, tone):
    content, style = pair
    other = tmp_path / "other.wav"
    sf.write(other, tone(0.7, f0=150, seed=3), 22050)
    clips = [utils.load_audio(content), utils.load_audio(str(other))]
    s = utils.load_audio(style)
    args = _args("-epochs", "20", "-segment", "1")
    together, _, _ = optimise(args, clips, s)
    for i, y in enumerate(clips):
        alone, _, _ = optimise(args, [y], s)
        assert np.array_equal(together[i], alone[0])


# ------------------------------------------------------------------------------ style

def _style_features(tone, seconds, kernel=(3, 1)):
    net = RandomCNN(seed=0, kernel=kernel)
    spec = utils.log_spectrogram(tone(seconds, f0=200, seed=5))
    return net, spec


@pytest.mark.parametrize("kernel", [(3, 1), (3, 5)])
def test_style_statistics_in_blocks_equal_the_direct_computation(tone, kernel):
    net, spec = _style_features(tone, 1.0, kernel)
    with torch.no_grad():
        S = net(torch.tensor(spec)[None]).flatten(1, 2)[0].double()
    gram = S @ S.T
    exact = train.style_statistics(spec, net, None, block=40)  # the Gram, block by block
    np.testing.assert_allclose(exact.gram.double().numpy(), gram.numpy(), rtol=1e-4, atol=1e-3)
    assert exact.squared_norm.item() == pytest.approx(gram.pow(2).sum().item(), rel=1e-5)
    # a running factor of more columns than the style has frames loses nothing
    factor = train.style_statistics(spec, net, 200, block=40)
    assert factor.frames == spec.shape[1] < 200
    F = factor.factor.double()
    np.testing.assert_allclose((F @ F.T).numpy(), gram.numpy(), rtol=1e-4, atol=1e-3)
    assert factor.squared_norm.item() == pytest.approx(gram.pow(2).sum().item(), rel=1e-5)


def test_a_merge_of_the_running_factor_is_the_top_directions_of_both():
    """model._merged, which takes K's first block from the factor's eigenvalues, against
    _top_directions on the two side by side: the same Gram, and eigenvalues that are the
    new factor's squared column norms (its columns orthogonal), as the next merge uses."""
    gen = torch.Generator().manual_seed(0)
    Z = torch.randn(300, 40, generator=gen) * torch.logspace(0, -2, 40)
    factor = model._top_directions(Z, 24)
    values = factor.pow(2).sum(dim=0)
    part = torch.randn(300, 16, generator=gen) * 0.1
    direct = model._top_directions(torch.cat([factor, part], dim=1), 24)
    for first_block in (values, None):  # the block given, or computed
        merged, merged_values = model._merged(factor, first_block, part, 24)
        torch.testing.assert_close(merged @ merged.T, direct @ direct.T, rtol=0, atol=1e-4)
        gram = merged.T @ merged
        torch.testing.assert_close(gram, torch.diag(merged_values), rtol=0,
                                   atol=1e-4 * merged_values.max().item())


def test_a_running_factor_below_full_rank_leaves_out_what_the_best_one_does(tone):
    """A style of 345 frames merged 40 at a time into a factor of 32 columns (each merge
    cut to 256, then the final cut): what its Gram leaves out of the style's is what the
    eigen-decomposition of the whole leaves out."""
    net, spec = _style_features(tone, 2.0)
    with torch.no_grad():
        S = net(torch.tensor(spec)[None]).flatten(1, 2)[0].double()
    running = train.style_statistics(spec, net, 32, block=40)
    assert running.factor.shape[1] == 32 and spec.shape[1] > 256
    gram = S @ S.T
    F = running.factor.double()
    left_out = ((gram - F @ F.T).pow(2).sum() / gram.pow(2).sum()).item()
    eig = torch.linalg.eigvalsh(S.T @ S)
    best = (eig[:-32].pow(2).sum() / eig.pow(2).sum()).item()
    assert best <= left_out * (1 + 1e-6) and left_out == pytest.approx(best, rel=1e-2)


def test_top_directions_by_subspace_iteration_keep_what_the_eigen_decomposition_does(
        tone, monkeypatch):
    """Past SUBSPACE_FROM frames the style's top directions come from subspace iteration:
    here forced on a 1-s style of 173 frames, the rank-32 factor's Gram leaves out what
    the exact eigen-decomposition's does, and its columns are orthogonal."""
    net, spec = _style_features(tone, 1.0)
    with torch.no_grad():
        style = net(torch.tensor(spec)[None])
    exact = StyleGram.from_features(style, 32).factor.double()
    monkeypatch.setattr(model, "SUBSPACE_FROM", 64)
    iterated = StyleGram.from_features(style, 32).factor.double()
    S = style.flatten(1, 2)[0].double()
    gram = S @ S.T
    left_out = [((gram - F @ F.T).pow(2).sum() / gram.pow(2).sum()).item()
                for F in (exact, iterated)]
    assert left_out[1] == pytest.approx(left_out[0], rel=1e-3)
    product = iterated.T @ iterated
    off_diagonal = product - torch.diag(torch.diag(product))
    assert off_diagonal.abs().max() < 1e-4 * product.diag().max()


def test_a_style_factor_of_bounded_rank_is_exact_at_full_rank_and_close_below(tone):
    net, spec = _style_features(tone, 1.0)
    content = torch.tensor(utils.log_spectrogram(tone(0.5, f0=110)))[None]
    with torch.no_grad():
        style, gen = net(torch.tensor(spec)[None]), net(content + 0.3)
        exact = StyleLoss(style, gen.shape[3])(gen).item()
        full = StyleLoss(StyleGram.from_features(style, rank=spec.shape[1]), 1)(gen).item()
        low = StyleGram.from_features(style, rank=32)
        assert low.factor.shape == (style.shape[1] * style.shape[2], 32)
        approx = StyleLoss(low, gen.shape[3])(gen).item()
    assert full == exact
    assert approx == pytest.approx(exact, rel=1e-3)
    # the factor's Gram is the best rank-32 approximation: its error is what is left out
    S = style.flatten(1, 2)[0].double()
    eig = torch.linalg.eigvalsh(S.T @ S)
    F = low.factor.double()
    left_out = ((S @ S.T - F @ F.T).pow(2).sum() / (S @ S.T).pow(2).sum()).item()
    assert left_out == pytest.approx((eig[:-32].pow(2).sum() / eig.pow(2).sum()).item(),
                                     rel=1e-2, abs=1e-9)


def test_a_style_factor_cut_to_a_lower_rank_is_the_factor_made_at_that_rank(tone):
    """The first pass's target (StyleGram.cut): the rank-256 factor cut to 32 columns has
    the Gram and constant of the factor made at rank 32 directly; at or above its own
    rank, the cut is the Gram itself."""
    net, spec = _style_features(tone, 1.0)
    with torch.no_grad():
        style = net(torch.tensor(spec)[None])
    wide, direct = StyleGram.from_features(style, 64), StyleGram.from_features(style, 32)
    cut = wide.cut(32)
    F, D = cut.factor.double(), direct.factor.double()
    scale = (D @ D.T).abs().max().item()
    np.testing.assert_allclose((F @ F.T).numpy(), (D @ D.T).numpy(), atol=1e-4 * scale)
    assert cut.squared_norm.item() == pytest.approx(direct.squared_norm.item(), rel=1e-4)
    assert cut.rank == 32 and wide.cut(64) is wide and wide.cut(100) is wide


# ------------------------------------------------------------------------------ stopping

def test_the_default_stopping_rule_stops_a_converging_run(pair, capsys):
    content, style = pair
    args = _args("-content", content, "-style", style)
    assert args.tol is not None and args.epochs == 300
    y, s = utils.load_audio(content), utils.load_audio(style)
    _, runs, why = optimise(args, [y], s)
    done = runs[0][1][0][-1][0]
    assert why.startswith("converged") and done < 300
    assert f"stopped at step {done}: converged" in capsys.readouterr().err


# ------------------------------------------------------------------------------ STFT, Griffin-Lim, pictures

def test_stft_a_block_at_a_time_equals_the_whole(tone):
    y = tone(1.0)
    whole = utils.stft(y)
    frames = whole.shape[1]
    assert frames == utils.frame_count(len(y))
    for start, stop in [(0, 10), (5, 40), (frames - 7, frames), (0, frames)]:
        np.testing.assert_allclose(utils.stft_frames(y, start, stop), whole[:, start:stop],
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(utils.log_spectrogram(y, block=50), utils.log_spectrogram(y),
                               rtol=1e-5, atol=1e-6)


def test_griffin_lim_in_chunks_joins_smoothly(tone):
    """Chunks of 60 frames: the result is as consistent with its target as a whole-clip
    inversion, and no seam clicks."""
    y = tone(3.0)
    spec = utils.log_spectrogram(y)
    target = utils.magnitude(spec)

    def error(audio):  # spectral convergence against the target magnitudes
        return np.linalg.norm(np.abs(utils.stft(audio)) - target) / np.linalg.norm(target)
    whole = utils.griffin_lim(spec, len(y), iters=30)
    chunked = utils.griffin_lim(spec, len(y), iters=30, chunk=60)
    assert len(chunked) == len(y)
    assert error(chunked) < 1.15 * error(whole)
    # no click: the largest sample-to-sample step stays the tone's own
    assert np.abs(np.diff(chunked)).max() < 1.5 * np.abs(np.diff(y)).max()


def test_long_pictures_are_averaged_down(tmp_path):
    spec = np.log1p(np.tile([[1.0, 3.0]], (4, 5)))  # power 1, 9, 1, 9, ...
    small = utils.picture_columns(spec, columns=5)
    np.testing.assert_allclose(small, np.sqrt(5.0))
    long = np.log1p(np.random.default_rng(0).random((257, 20000))).astype(np.float32)
    utils.plot_spectrograms([("long", long)], tmp_path / "long.png")
    from PIL import Image
    assert Image.open(tmp_path / "long.png").size[0] < 110 * (utils.PICTURE_SECONDS + 4)


def test_long_pictures_are_stacked_short_ones_side_by_side(tmp_path):
    """Three 10-s panels in a row were a strip 4128 x 408 pixels; stacked, the picture is
    no wider than one panel and its colour bar, and each panel keeps its height."""
    from PIL import Image
    rng = np.random.default_rng(0)
    def panels(frames):
        return [(name, np.log1p(rng.random((257, frames))).astype(np.float32))
                for name in ("content", "style", "generated")]
    utils.plot_spectrograms(panels(1724), tmp_path / "long.png")  # 10 s each
    width, height = Image.open(tmp_path / "long.png").size
    assert width < 110 * (utils.PICTURE_SECONDS + 3)
    assert height > 3 * 110 * 2.0
    utils.plot_spectrograms(panels(240), tmp_path / "short.png")  # 1.4 s each
    width, height = Image.open(tmp_path / "short.png").size
    assert width > 2 * height


# ------------------------------------------------------------------------------ memory

def test_a_run_past_the_memory_limit_is_refused_before_any_work(pair, tmp_path, capsys):
    content, style = pair
    out = tmp_path / "out"
    code = train.main(["-content", content, "-style", style, "-output", str(out),
                       "-max_memory", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs about" in err and "GB of memory" in err and "0.5 GB allowed" in err
    assert not out.exists()


def test_memory_estimate_grows_with_exact_clips_and_not_with_segmented_ones():
    args, exact = _args(), _args("-exact")
    minute = 60 * utils.SAMPLE_RATE
    short, long = (train.memory_needed(args, [n * minute], 3 * minute) for n in (1, 10))
    assert long - short < 50 * 9 * minute * 1.01  # only the audio and its spectrograms
    assert train.memory_needed(exact, [10 * minute], 3 * minute) > 20 * 2 ** 30
    # HiFi-GAN renders in blocks: one block's worth more, at any length
    hifigan = _args("-vocoder", "hifigan")
    for n in (1, 10):
        assert train.memory_needed(hifigan, [n * minute], 3 * minute) == \
            train.memory_needed(args, [n * minute], 3 * minute) + vocoder.BLOCK_BYTES


def test_a_corrected_target_is_the_style_plus_the_segment_less_the_whole():
    """A later pass sets a segment against S S^T + O O^T - W W^T (its own Gram O O^T, the
    whole clip's W W^T): the signed factor's loss equals that, written out."""
    rng = np.random.default_rng(6)
    style = torch.tensor(rng.standard_normal((1, 2, 3, 7)))
    own, whole = (torch.tensor(rng.standard_normal((6, n))) for n in (4, 9))
    gen = torch.tensor(rng.standard_normal((1, 2, 3, 5)))
    target = StyleGram.from_features(style).corrected(own, StyleGram.from_features(
        whole.reshape(1, 2, 3, 9)))
    S = style.reshape(6, 7)
    G = S @ S.T + own @ own.T - whole @ whole.T
    A = gen.reshape(6, 5)
    expected = ((A @ A.T - G) ** 2).sum().item() / (4 * 2 * 2 * 3 * 5)
    assert target.squared_norm.item() == pytest.approx((G ** 2).sum().item(), rel=1e-10)
    for form in ("time", "gram"):
        got = StyleLoss(target, 5, form=form)(gen)
        assert got.item() == pytest.approx(expected, rel=1e-10)
    # and its gradient, written out by hand in the time form, is autograd's of the same
    A64 = gen.clone().requires_grad_()
    StyleLoss(target, 5, form="time")(A64).sum().backward()
    A_ref = gen.clone().requires_grad_()
    ((A_ref.reshape(6, 5) @ A_ref.reshape(6, 5).T - G) ** 2).sum().div(4 * 2 * 2 * 3 * 5).backward()
    torch.testing.assert_close(A64.grad, A_ref.grad, rtol=1e-10, atol=1e-12)


def test_a_corrected_target_cut_to_a_rank_is_its_best_signed_approximation():
    """Cut to rank k, the target M diag(s) M^T keeps its k eigenvalues of largest size, of
    either sign: the squared error left is the sum of the others' squares, the least any
    rank-k matrix leaves (Eckart-Young for a symmetric matrix), and its constant is the
    cut target's own squared norm, so the loss stays a squared distance."""
    rng = np.random.default_rng(7)
    style = torch.tensor(rng.standard_normal((1, 2, 20, 12)))  # N = 40 rows
    own, whole = (torch.tensor(rng.standard_normal((40, n))) for n in (9, 15))
    whole_gram = StyleGram.from_features(whole.reshape(1, 2, 20, 15))
    full = StyleGram.from_features(style).corrected(own, whole_gram)
    cut = StyleGram.from_features(style).corrected(own, whole_gram, rank=10)
    G = (full.factor * full.signs) @ full.factor.T
    values = torch.linalg.eigvalsh(G)
    by_size = values[values.abs().argsort(descending=True)]
    G10 = (cut.factor * cut.signs) @ cut.factor.T
    assert cut.factor.shape == (40, 10)
    assert ((G - G10) ** 2).sum().item() == pytest.approx((by_size[10:] ** 2).sum().item(),
                                                         rel=1e-8)
    assert sorted(cut.signs.tolist()) == sorted(by_size[:10].sign().tolist())
    assert cut.squared_norm.item() == pytest.approx((by_size[:10] ** 2).sum().item(), rel=1e-8)
    # a rank above the factor's columns leaves it whole
    same = StyleGram.from_features(style).corrected(own, whole_gram, rank=100)
    assert torch.equal(same.factor, full.factor)


def test_a_second_pass_brings_segments_closer_to_the_whole_clip_objective(pair):
    """The whole clip's reference loss of a two-pass result is below the one-pass one."""
    content, style = pair
    y, s = utils.load_audio(content), utils.load_audio(style)
    content_spec, style_spec = utils.log_spectrogram(y), utils.log_spectrogram(s)

    def whole_clip_loss(generated):
        t = train.Transfer([content_spec], style_spec, device=CPU)
        with torch.no_grad():
            t.spec.copy_(torch.as_tensor(generated)[None])
            return sum(x.item() for x in t.losses())
    losses = []
    for passes in ("1", "2"):
        args = _args("-segment", "0.6", "-overlap", "0.1", "-epochs", "60", "-passes", passes)
        generated, _, _ = optimise(args, [y], s)
        losses.append(whole_clip_loss(generated[0]))
    assert losses[1] < losses[0]


def test_a_style_far_longer_than_the_content_gets_a_note(tone, capsys):
    """The reference's Grams are sums over frames: a content clip a third of the style's
    length is asked to be louder to match, which past some ratio overflows (a 1-minute clip
    against a 30-minute style reached log magnitudes of 57). The run says so, and points to
    -normalize_gram, which compares per-frame Grams; a style of similar length says nothing."""
    content, style = tone(0.3, f0=110), tone(1.0, f0=230, seed=1)
    for extra, noted in (((), True), (("-normalize_gram",), False)):
        args = _args("-epochs", "1", *extra)
        optimise(args, [content], style)
        assert ("times as long as the content" in capsys.readouterr().err) == noted
    optimise(_args("-epochs", "1"), [content], tone(0.5, f0=230))
    assert "times as long" not in capsys.readouterr().err


def test_style_cap_counts_a_long_style_as_that_many_times_the_content(tone, capsys):
    """-style_cap X: a style more than X times the content's length is set against as if it
    were X times as long, its Gram scaled by X T / Ts: a style of the same clip said k times
    over (whose Gram, through a network one frame wide, is k times the clip's) then gives
    the run it gives said once at X = 1. Within the cap nothing changes, and no note
    about the style's length is printed for a capped style."""
    content, once = tone(0.4, f0=110), tone(0.4, f0=230, seed=1)
    spec = utils.log_spectrogram(once)
    args = _args("-style_cap", "1")
    contents = [utils.log_spectrogram(content), utils.log_spectrogram(tone(1.0, f0=120))]
    assert train.style_targets(args, contents, 3 * spec.shape[1]) == pytest.approx(
        [1 / 3, min(1.0, contents[1].shape[1] / (3 * spec.shape[1]))])
    assert train.style_targets(_args(), contents, 3 * spec.shape[1]) == [1.0, 1.0]
    normalized = _args("-style_cap", "1", "-normalize_gram")  # lengths do not count there
    assert train.style_targets(normalized, contents, 3 * spec.shape[1]) == [1.0, 1.0]

    # three times over, as a spectrogram: the same frames, so exactly three times the Gram
    thrice = np.concatenate([spec] * 3, axis=1)
    for segments in ((), ("-segment", "0.15", "-overlap", "0.03")):  # whole; two passes
        made = {}
        for name, style, extra in (("once", spec, ()), ("thrice", thrice, ("-style_cap", "1")),
                                   ("within", spec, ("-style_cap", "1"))):
            # few iterations: the two styles' Grams round differently, and L-BFGS's line
            # search branches, which turned 1e-8 at 3 iterations into 1e-4 at 4 and 0.7
            # at 5 (segmented, on an Intel Xeon; the AMD EPYC's rounding did not branch)
            a = _args("-epochs", "3", *segments, *extra)
            made[name] = train.run_random_cnn(a, [contents[0]], style, CPU, 0,
                                              progress=False)[0][0]
        assert np.abs(made["thrice"] - made["once"]).max() < 1e-4
        assert np.array_equal(made["within"], made["once"])  # within the cap: untouched
    capsys.readouterr()
    optimise(_args("-epochs", "1", "-style_cap", "2"), [content], tone(2.0, f0=230))
    err = capsys.readouterr().err
    assert "-style_cap 2: the style" in err and "times as long as the content:" not in err


def test_style_floor_counts_a_short_style_as_that_many_times_the_content(tone, capsys):
    """-style_floor Y: a style less than Y times the content's length is set against as if
    it were Y times as long, its Gram scaled by Y T / Ts: against a content three times
    its length, the style said once at Y = 1 gives the run it gives said three times over.
    A style longer than that is untouched; with a cap too, a longer style is scaled down and
    a shorter one up; the run says so."""
    once = utils.log_spectrogram(tone(0.4, f0=230, seed=1))
    Ts = once.shape[1]
    content = utils.log_spectrogram(tone(1.4, f0=110))[:, :3 * Ts]  # exactly three times
    other = utils.log_spectrogram(tone(0.3, f0=120))  # shorter than the style
    assert train.style_targets(_args("-style_floor", "1"), [content, other], Ts) == \
        pytest.approx([3.0, 1.0])
    assert train.style_targets(_args("-style_floor", "0.5"), [content], Ts) == \
        pytest.approx([1.5])
    # twice Ts: short of the first clip's floor (scaled up), past the second's cap (down)
    both = _args("-style_cap", "2", "-style_floor", "1")
    assert train.style_targets(both, [content, other], 2 * Ts) == pytest.approx(
        [1.5, 2 * other.shape[1] / (2 * Ts)])
    assert 2 * other.shape[1] < 2 * Ts < content.shape[1]
    assert train.style_targets(_args("-style_floor", "1", "-normalize_gram"), [content],
                               Ts) == [1.0]

    thrice = np.concatenate([once] * 3, axis=1)
    for segments in ((), ("-segment", "0.15", "-overlap", "0.03")):  # whole; two passes
        made = {}
        for name, style, extra in (("thrice", thrice, ()), ("floor", once, ("-style_floor", "1")),
                                   ("within", thrice, ("-style_floor", "1"))):
            a = _args("-epochs", "3", *segments, *extra)  # few: see the -style_cap test
            made[name] = train.run_random_cnn(a, [content], style, CPU, 0,
                                              progress=False)[0][0]
        assert np.abs(made["floor"] - made["thrice"]).max() < 1e-4
        assert np.array_equal(made["within"], made["thrice"])  # as long already: untouched
    capsys.readouterr()
    optimise(_args("-epochs", "1", "-style_floor", "1"), [tone(1.2, f0=110)], tone(0.4, f0=230))
    assert "-style_floor 1: the style" in capsys.readouterr().err


def test_a_style_floor_above_its_cap_is_one_line(capsys):
    assert train.main(["-style_floor", "3", "-style_cap", "2", "-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "-style_floor 3 is above -style_cap 2" in err


def test_each_segment_of_a_pass_starts_at_the_step_the_last_one_took(pair, monkeypatch):
    """From the noise start the first line search spends some 15 evaluations growing the
    short gradient step; segments of one clip are alike, so each one after the first in a
    pass tries first the step the one before took. A clip optimised whole gets none. And
    segments keep a shorter history than a clip optimised whole."""
    made = []

    class Recorded(train.lbfgs.LBFGS):
        def __init__(self, x, **options):
            super().__init__(x, **options)
            self.given_first_step = options.get("first_step")
            made.append(self)
    monkeypatch.setattr(train.lbfgs, "LBFGS", Recorded)
    content, style = pair
    y, s = utils.load_audio(content), utils.load_audio(style)
    optimise(_args("-segment", "0.6", "-overlap", "0.1", "-epochs", "40"), [y], s)
    segments = len(made) // 2  # two passes
    assert segments >= 3 and len(made) == 2 * segments
    for one_pass in (made[:segments], made[segments:]):
        assert one_pass[0].given_first_step is None  # the first of a pass: nothing to go by
        for before, after in zip(one_pass, one_pass[1:]):
            assert after.given_first_step == before.first_taken > 0
    assert {o.history for o in made} == {train.SEGMENT_LBFGS_HISTORY}
    made.clear()
    optimise(_args("-epochs", "8"), [y], s)
    assert len(made) == 1 and made[0].given_first_step is None
    assert made[0].history == train.LBFGS_HISTORY > train.SEGMENT_LBFGS_HISTORY


def test_a_first_pass_stops_sooner_and_a_later_one_reads_a_shorter_window(pair, monkeypatch):
    """A first pass that a later one refines is only its start: it stops at FIRST_PASS_TOL
    times -tol, and its L-BFGS gives up at the first line search that rounding defeats. A
    later pass starts near its optimum and reads REFINE_WINDOW of -tol_window at as much
    of -tol (the same rate of fall). A clip optimised whole: -tol over -tol_window."""
    seen = []
    real = train.optimise

    def recorded(t, epochs, print_interval, plot_interval, tol, window, *rest, **options):
        seen.append((tol, window, t.optimizer.stop_at_rounding))
        return real(t, epochs, print_interval, plot_interval, tol, window, *rest, **options)
    monkeypatch.setattr(train, "optimise", recorded)
    content, style = pair
    y, s = utils.load_audio(content), utils.load_audio(style)
    rule = ("-epochs", "30", "-tol", "0.01", "-tol_window", "8")
    optimise(_args("-segment", "0.6", "-overlap", "0.1", *rule), [y], s)
    segments = len(seen) // 2
    assert segments >= 3
    assert seen[:segments] == [(0.01 * train.FIRST_PASS_TOL, 8, True)] * segments
    assert seen[segments:] == [(0.01 * train.REFINE_WINDOW, round(8 * train.REFINE_WINDOW),
                                False)] * segments
    seen.clear()
    optimise(_args(*rule), [y], s)
    assert seen == [(0.01, 8, False)]
