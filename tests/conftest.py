import os
import sys

import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture
def tone():
    """A short harmonic tone with a gliding pitch: speech-like enough for the STFT tests."""
    def make(seconds=0.5, sr=22050, f0=140.0, seed=0):
        t = np.arange(int(seconds * sr)) / sr
        pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(pitch) / sr
        y = sum(np.sin(k * phase) / k for k in range(1, 12))
        y += 0.01 * np.random.default_rng(seed).standard_normal(len(t))
        return (0.3 * y / np.max(np.abs(y))).astype(np.float32)
    return make


@pytest.fixture
def bad_files(tmp_path):
    """Every way an input file can be unusable: name -> (path, words its error must contain)."""
    cases = {"missing": (tmp_path / "nope.wav", "no such file"),
             "directory": (tmp_path, "is a directory")}
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    cases["not audio"] = (text, "not a readable audio file")
    good = tmp_path / "good.wav"
    sf.write(good, np.full(4000, 0.1, np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(good.read_bytes()[:30])  # header cut off mid-way
    cases["corrupt"] = (corrupt, "not a readable audio file")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    cases["empty"] = (empty, "no audio samples")
    short = tmp_path / "short.wav"
    sf.write(short, np.full(100, 0.1, np.float32), 16000)
    cases["too short"] = (short, "too short")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    cases["silent"] = (silent, "silent")
    nan = tmp_path / "nan.wav"
    samples = np.full(16000, 0.1, np.float32)
    samples[100] = np.nan
    sf.write(nan, samples, 16000, subtype="FLOAT")
    cases["nan"] = (nan, "NaN")
    return cases


def optimise(args, contents, style):
    """train.py's optimisation of `contents` against `style` (audio, as load_audio gives),
    on the CPU, through VoiceTransfer's stages: (generated, runs, why)."""
    import train  # here, not at the top: conftest is imported before any test needs torch
    args.device = "cpu"
    vt = train.VoiceTransfer.from_settings(args)
    return vt.optimise(*vt.spectrograms(contents, style), progress=False)
