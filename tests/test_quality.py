"""The options issue 5 measured for transfer quality, each end to end on the shipped clips."""
import os

import librosa
import numpy as np
import pytest

import train
import utils
from conftest import ROOT

MALE, FEMALE = (os.path.join(ROOT, "input", f) for f in ("male.wav", "female.wav"))


def test_shift_pitch_formants_identity_and_pitch(tone):
    y = tone(0.6, f0=120.0)
    # ratios of 1 give back log_spectrogram (to the 1e-6 floor of the log)
    assert np.allclose(utils.shift_pitch_formants(y), utils.log_spectrogram(y), atol=1e-5)
    # a steady 300 Hz harmonic tone: its strongest bin, the fundamental, moves to 450 Hz
    t = np.arange(int(0.6 * utils.SAMPLE_RATE)) / utils.SAMPLE_RATE
    steady = sum(np.sin(2 * np.pi * 300 * k * t) / k for k in range(1, 8)).astype(np.float32)
    bin_hz = utils.SAMPLE_RATE / utils.N_FFT

    def peak_hz(spec):
        return bin_hz * int(np.argmax(spec.mean(axis=1)))
    assert peak_hz(utils.log_spectrogram(steady)) == pytest.approx(300, abs=bin_hz)
    shifted = utils.shift_pitch_formants(steady, pitch_ratio=1.5)
    assert peak_hz(shifted) == pytest.approx(450, abs=bin_hz)


def test_shift_pitch_formants_a_block_of_frames_at_a_time_is_the_whole(tone):
    y = tone(0.6, f0=120.0)
    whole = utils.shift_pitch_formants(y, pitch_ratio=1.2, formant_ratio=1.1)
    blocks = utils.shift_pitch_formants(y, pitch_ratio=1.2, formant_ratio=1.1, block=17)
    np.testing.assert_allclose(blocks, whole, atol=1e-5)


def test_median_f0_of_a_long_clip_reads_a_bounded_part_of_it(tone, monkeypatch):
    """pYIN is given pieces of at most F0_PIECE seconds: the whole clip in equal pieces up
    to F0_PIECES of them, and past that F0_PIECES pieces spread over it, never more. The
    median is the tone's pitch either way (its glide is symmetric about 150 Hz)."""
    monkeypatch.setattr(utils, "F0_PIECE", 0.5)
    read, pyin = [], librosa.pyin
    monkeypatch.setattr(librosa, "pyin", lambda y, **kw: read.append(len(y)) or pyin(y, **kw))
    short, long = tone(1.6, f0=150.0), tone(3.3, f0=150.0)
    assert utils.median_f0(short) == pytest.approx(150, rel=0.02)
    assert len(read) == 4 and sum(read) == len(short) and max(read) <= 0.5 * 22050
    read.clear()
    assert utils.median_f0(long) == pytest.approx(150, rel=0.02)
    assert read == [int(0.5 * 22050)] * 4


def test_formant_ratio_moves_the_envelope_up(tone):
    y = tone(0.6, f0=120.0)
    freqs = np.linspace(0, utils.SAMPLE_RATE / 2, utils.N_FFT // 2 + 1)[:, None]

    def centroid(spec):
        mag = np.expm1(spec)
        return float(np.mean((freqs * mag).sum(0) / mag.sum(0)))
    assert centroid(utils.shift_pitch_formants(y, formant_ratio=1.3)) > \
        1.15 * centroid(utils.log_spectrogram(y))


def test_pitch_ratio_auto_end_to_end(tmp_path, capsys):
    """train.py -pitch_ratio auto: the written voice speaks at the style's pitch."""
    out = tmp_path / "out"
    code = train.main(["-content", MALE, "-style", FEMALE, "-pitch_ratio", "auto",
                       "-formant_ratio", "1.1", "-optimizer", "lbfgs", "-epochs", "20",
                       "-style_weight", "0.1", "-griffin_lim_iters", "30", "-output", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "-pitch_ratio auto: style" in err
    written = utils.load_audio(str(out / "male_as_female.wav"))
    male, female = utils.load_audio(MALE), utils.load_audio(FEMALE)
    assert len(written) == len(male)
    f0_male, f0_female, f0_out = (utils.median_f0(y) for y in (male, female, written))
    assert f0_female > 1.3 * f0_male  # the clips differ in pitch, so the test means something
    assert f0_out == pytest.approx(f0_female, rel=0.1)


def test_pitch_ratio_refuses_nonsense(capsys):
    for bad in ("0", "-2", "x"):
        with pytest.raises(SystemExit):
            train.build_parser().parse_args(["-pitch_ratio", bad])
    assert train.build_parser().parse_args(["-pitch_ratio", "auto"]).pitch_ratio == "auto"
    assert train.build_parser().parse_args(["-pitch_ratio", "1.5"]).pitch_ratio == 1.5


def test_formant_ratio_auto_follows_the_pitch_ratio_by_hand(monkeypatch):
    """-formant_ratio auto: the median F0s' ratio to the power 0.3, held within 0.85-1.2;
    -pitch_ratio, given as a number, stays that number."""
    f0 = {"content": 120.0, "style": 150.0, "deep": 60.0, "high": 300.0}
    monkeypatch.setattr(utils, "median_f0", lambda y: f0[y])
    args = train.build_parser().parse_args(["-formant_ratio", "auto", "-pitch_ratio", "1.5"])
    assert args.formant_ratio == "auto"
    ratios = train.reshaping_ratios(args, ["content", "deep", "high"], "style")
    assert ratios == [(1.5, pytest.approx(1.25 ** 0.3)), (1.5, 1.2), (1.5, 0.85)]
    args.pitch_ratio = "auto"
    assert train.reshaping_ratios(args, ["content"], "style") == [
        (1.25, pytest.approx(1.25 ** 0.3))]
    args.formant_ratio = 1.1
    assert train.reshaping_ratios(args, ["content"], "style") == [(1.25, 1.1)]
    for bad in ("0", "-2", "x"):
        with pytest.raises(SystemExit):
            train.build_parser().parse_args(["-formant_ratio", bad])
