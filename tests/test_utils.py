"""Audio loading and its errors, the STFT, Griffin-Lim, atomic writes and pictures."""
import errno
import os

import librosa
import numpy as np
import pytest
import soundfile as sf

import utils


def test_load_mixes_stereo_and_resamples(tmp_path, tone):
    y = tone(0.5, sr=44100)
    stereo = np.stack([y, 0.5 * y], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100)
    loaded = utils.load_audio(str(path))
    assert loaded.dtype == np.float32
    assert len(loaded) == pytest.approx(0.5 * 22050, abs=2)
    # same as librosa.load, which is what the reference reads with
    expected, _ = librosa.load(str(path), sr=22050)
    np.testing.assert_allclose(loaded, expected, atol=1e-4)


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
def test_load_other_formats(tmp_path, tone, fmt):
    path = tmp_path / f"clip.{fmt}"
    sf.write(path, tone(0.3, sr=16000), 16000)
    assert len(utils.load_audio(str(path))) == pytest.approx(0.3 * 22050, abs=2)


def test_each_bad_file_gets_one_line_naming_it(bad_files):
    for name, (path, words) in bad_files.items():
        with pytest.raises(utils.AudioError) as info:
            utils.load_audio(str(path))
        message = str(info.value)
        assert words in message, name
        assert str(path) in message, name
        assert "\n" not in message, name


def test_log_spectrogram_is_log1p_of_stft_magnitude(tone):
    y = tone(0.5)
    S = utils.log_spectrogram(y)
    assert S.shape == (257, 1 + len(y) // 128)
    # the reference's transform; ours is torch's, equal to float32 rounding
    expected = np.log(1 + np.abs(librosa.stft(y, n_fft=512, hop_length=128)))
    np.testing.assert_allclose(S, expected, rtol=1e-6, atol=1e-5)


def test_griffin_lim_with_true_phase_is_exact(tone):
    y = tone(0.5)
    S = utils.log_spectrogram(y)
    back = utils.griffin_lim(S, len(y), iters=1, phase=np.angle(utils.stft(y)))
    assert len(back) == len(y)
    assert np.max(np.abs(back - y)) < 1e-4


def _spectral_convergence(y, S):
    target = np.expm1(S)
    rebuilt = np.abs(utils.stft(y))
    return np.linalg.norm(rebuilt - target) / np.linalg.norm(target)


def test_griffin_lim_from_random_phase_converges(tone):
    """50 iterations from random phase bring the magnitude within 25% (spectral
    convergence) on a harmonic tone; more iterations or momentum do better."""
    y = tone(0.5)
    S = utils.log_spectrogram(y)
    one = _spectral_convergence(utils.griffin_lim(S, len(y), iters=1), S)
    fifty = _spectral_convergence(utils.griffin_lim(S, len(y), iters=50), S)
    fast = _spectral_convergence(utils.griffin_lim(S, len(y), iters=50, momentum=0.99), S)
    assert fifty < 0.25 < one
    assert fast < fifty


@pytest.mark.parametrize("momentum", [0.0, 0.99])
def test_torch_griffin_lim_matches_librosa(tone, momentum):
    """The GPU port (torch.stft/istft), run here on the CPU, against librosa's transforms
    from the same starting phase: 1e-4 relative (1e-2 with momentum, which amplifies
    float32 rounding over the iterations)."""
    y = tone(0.5)
    S = utils.log_spectrogram(y)
    a = utils.griffin_lim(S, len(y), momentum=momentum, backend="librosa")
    b = utils.griffin_lim(S, len(y), momentum=momentum, backend="torch")
    bound = 1e-4 if momentum == 0 else 1e-2
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < bound


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("old")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        utils.atomic_write(str(path), broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.txt"]


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_pictures_are_pngs(tmp_path, tone):
    import matplotlib.image
    S = utils.log_spectrogram(tone(0.5))
    spec = tmp_path / "spec.png"
    utils.plot_spectrograms([("a", S), ("b", S)], str(spec))
    loss = tmp_path / "loss.png"
    utils.plot_losses({"total": [(1, 10.0), (2, 5.0)]}, str(loss))
    confusion = tmp_path / "confusion.png"
    utils.plot_confusion(np.eye(3, dtype=int) * 2, ["a", "b", "c"], str(confusion))
    for path in (spec, loss, confusion):
        assert _is_png(path)
        height, width, _ = matplotlib.image.imread(str(path)).shape
        assert height > 200 and width > 200


def test_follow_loudness_by_hand():
    """Two bins, two frames: frame energies 1 and 4 (contour 0.4, 1.6 around their mean
    2.5), the content's the other way round (1.6, 0.4)."""
    generated = np.log1p(np.array([[1.0, 2.0], [0.0, 0.0]]))
    content = np.log1p(np.array([[2.0, 0.0], [0.0, 1.0]]))
    def magnitude(spec):
        return np.expm1(spec.astype(np.float64))
    # strength 1: the content's contour, each frame's gain sqrt(1.6 / 0.4) = 2 or 1/2
    np.testing.assert_allclose(magnitude(utils.follow_loudness(generated, content, 1.0)),
                               [[2.0, 1.0], [0.0, 0.0]], rtol=1e-5)
    # half way in dB: gains 2^(1/2) and 2^(-1/2)
    np.testing.assert_allclose(magnitude(utils.follow_loudness(generated, content, 0.5)),
                               [[2 ** 0.5, 2 ** 0.5], [0.0, 0.0]], rtol=1e-5)
    # strength 0 changes nothing
    np.testing.assert_allclose(utils.follow_loudness(generated, content, 0.0), generated,
                               rtol=1e-6)
    # a frame the content leaves silent is turned down by at most max_gain_db
    silent = np.log1p(np.array([[1.0, 1.0], [0.0, 0.0]]))
    quiet = magnitude(utils.follow_loudness(silent, np.log1p(np.array([[1.0, 0.0]] * 2)), 1.0,
                                            max_gain_db=20))
    assert quiet[0, 1] == pytest.approx(0.1, rel=1e-5)


# ---------------------------------------------------------------------------- failed writes

def _full_disk(path, *_, **__):
    """A write that fails as a full disk does: part of the file, then ENOSPC."""
    with open(path, "wb") as f:
        f.write(b"half a file")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_is_one_line_naming_the_file_and_the_reason(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("old")
    with pytest.raises(utils.OutputError) as info:
        utils.atomic_write(str(path), _full_disk)
    assert str(info.value) == f"{path}: cannot write (No space left on device)"
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["result.txt"]


def test_save_wav_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    """libsndfile itself says only "System error" when the disk is full; the wav is
    encoded in memory and written by Python, whose error says why."""
    monkeypatch.setattr(utils, "_write_bytes", _full_disk)
    wav = tmp_path / "out.wav"
    with pytest.raises(utils.OutputError) as info:
        utils.save_wav(str(wav), np.zeros(1000, np.float32))
    assert str(info.value) == f"{wav}: cannot write (No space left on device)"
    assert os.listdir(tmp_path) == []


def test_save_wav_writes_what_soundfile_would(tmp_path):
    y = np.linspace(-0.5, 0.5, 2000, dtype=np.float32)
    utils.save_wav(str(tmp_path / "a.wav"), y)
    sf.write(tmp_path / "b.wav", y, utils.SAMPLE_RATE, subtype="PCM_16")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_output_checks_before_the_work(tmp_path):
    """What would fail at the end of a run is found at its start: a name longer than the
    file system takes, a folder where a file goes; the folders made for it go again."""
    out = tmp_path / "a" / "b"
    long_name = str(out / ("x" * 250 + "_spectrograms.png"))
    with pytest.raises(utils.OutputError) as info:
        utils.check_writable_dir(str(out), [str(out / "ok.wav"), long_name])
    assert str(info.value) == f"{long_name}: cannot write (File name too long)"
    assert os.listdir(tmp_path) == []  # a/ and a/b/ were made for the run, and removed
    (tmp_path / "c" / "x.wav").mkdir(parents=True)
    with pytest.raises(utils.OutputError) as info:
        utils.check_writable_dir(str(tmp_path / "c"), [str(tmp_path / "c" / "x.wav")])
    assert str(info.value) == f"{tmp_path / 'c' / 'x.wav'}: cannot write (Is a directory)"
    assert os.listdir(tmp_path / "c") == ["x.wav"]  # the user's own folder stays


def test_a_folder_that_refuses_files_is_found_by_trying_one(tmp_path, monkeypatch):
    """os.access says yes to root for /sys/kernel, which then refuses every file: the
    check makes (and removes) a file to know."""
    real = utils.tempfile.mkstemp

    def refusing(*args, dir=None, **kw):
        if dir == str(tmp_path / "sysfs"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(*args, dir=dir, **kw)
    (tmp_path / "sysfs").mkdir()
    monkeypatch.setattr(utils.tempfile, "mkstemp", refusing)
    with pytest.raises(utils.OutputError) as info:
        utils.check_writable_dir(str(tmp_path / "sysfs"))
    assert str(info.value) == f"{tmp_path / 'sysfs'}: cannot write (Permission denied)"
    utils.check_writable_dir(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["sysfs"]  # the trial file is gone again


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/kernel"),
                    reason="as root only: os.access passes /sys/kernel for root alone")
def test_sys_kernel_as_root_is_refused():
    with pytest.raises(utils.OutputError, match="^/sys/kernel: cannot write"):
        utils.check_writable_dir("/sys/kernel")


def test_output_dir_is_removed_when_nothing_was_written(tmp_path):
    for fail in (KeyboardInterrupt, utils.AudioError):
        with pytest.raises(fail):
            with utils.output_dir(str(tmp_path / "new" / "out")):
                raise fail()
        assert os.listdir(tmp_path) == []
    with utils.output_dir(str(tmp_path / "new" / "out")):
        (tmp_path / "new" / "out" / "result.wav").write_bytes(b"x")
    assert os.listdir(tmp_path / "new" / "out") == ["result.wav"]


def test_fit_full_scale_by_hand(tmp_path):
    quiet = np.array([0.5, -0.25], np.float32)
    same, gain = utils.fit_full_scale(quiet)
    assert gain == 1.0 and same is quiet
    loud = np.array([0.5, -2.0, 1.0], np.float32)
    scaled, gain = utils.fit_full_scale(loud)
    assert gain == pytest.approx(utils.FULL_SCALE / 2)
    np.testing.assert_allclose(scaled, loud * utils.FULL_SCALE / 2, rtol=1e-6)
    # and 16-bit PCM holds its peak: -2.0 -> -32767, where unscaled it would clip
    utils.save_wav(str(tmp_path / "peak.wav"), scaled)
    samples, _ = sf.read(tmp_path / "peak.wav", dtype="int16")
    assert samples[1] == -32767  # the peak at full scale, and the rest in proportion
    np.testing.assert_allclose(samples, scaled * 32768, atol=1.01)
