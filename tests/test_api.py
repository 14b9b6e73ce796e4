"""The Python API (train.VoiceTransfer): the README's example as written, options checked as
their flags are, the command line's result from it bit for bit, audio given as arrays."""
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

import report
import train
import utils
from conftest import ROOT

QUICK = dict(epochs=4, griffin_lim_iters=2, device="cpu")


def readme_example():
    """The README's Python block, as the README has it."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    shutil.copytree(os.path.join(ROOT, "input"), tmp_path / "input")
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(readme_example(), "README.md", "exec"), names)
    result = names["result"]
    iteration, content_loss, style_loss = result.history[0][1][-1]
    assert capsys.readouterr().out == (f"{result.why} ({iteration}, {content_loss}, "
                                       f"{style_loss})\n")  # plain numbers, as a user reads them
    assert result.why.startswith(("converged", "ran all", "L-BFGS")) and 0 < iteration <= 300
    assert result.settings.style_weight == 2 and result.settings.seed == 1
    saved = sorted(os.listdir(tmp_path / "output"))
    assert saved == ["male_as_female_w2.json", "male_as_female_w2.wav",
                     "male_as_female_w2_loss.png", "male_as_female_w2_spectrograms.png"]
    audio, sr = sf.read(tmp_path / "output" / "male_as_female_w2.wav", dtype="float32")
    content = utils.load_audio("input/male.wav")
    assert sr == result.sample_rate == 22050 and len(audio) == len(content)
    assert np.max(np.abs(audio - result.audio)) < 1e-4  # 16-bit wav of the same samples
    record = report.read_record(str(tmp_path / "output" / "male_as_female_w2.wav"))
    assert record["content"] == str(tmp_path / "input" / "male.wav")
    assert record["settings"]["style_weight"] == 2 and record["stopped"] == result.why
    # the rerun names the clips the settings from Python did not hold
    assert "-content input/male.wav -style input/female.wav" in record["rerun"]
    assert result.spectrogram.shape == result.content_spectrogram.shape


def test_options_are_checked_as_their_flags_are():
    with pytest.raises(train.UsageError, match=r"argument -style_weight: must be >= 0, got -1"):
        train.VoiceTransfer(style_weight=-1)
    with pytest.raises(train.UsageError, match=r"argument -kernel: invalid choice: '3x7'"):
        train.VoiceTransfer(kernel="3x7")
    with pytest.raises(train.UsageError, match=r"^stlye_weight: not an option; .*style_weight"):
        train.VoiceTransfer(stlye_weight=1)
    with pytest.raises(train.UsageError, match=r"^output: not an option"):
        train.VoiceTransfer(output="out")  # the path goes to Result.save


def test_defaults_presets_and_switches_resolve_as_on_the_command_line():
    def settings(argv):
        args = train.build_parser().parse_args(argv)
        train.settle_defaults(args)
        return {k: v for k, v in vars(args).items() if k not in ("content", "style")}

    def api(**options):
        return {k: v for k, v in vars(train.VoiceTransfer(**options).settings).items()
                if k not in ("content", "style")}
    assert api() == settings([])
    assert api(preset="reference", epochs=5) == settings(["-preset", "reference", "-epochs", "5"])
    assert api(learning_rate=0.1 + 0.2) == settings(["-learning_rate", repr(0.1 + 0.2)])
    assert api(pitch_ratio="auto", kernel="3x3") == settings(["-pitch_ratio", "auto",
                                                              "-kernel", "3x3"])
    # a switch set False turns off a preset's True, which no flag can
    assert api(preset="reference")["exact"] is True
    assert api(preset="reference", exact=False)["exact"] is False


def test_the_command_line_gives_what_the_api_gives(tmp_path, tone, capsys):
    content, style = tmp_path / "low.wav", tmp_path / "high.wav"
    sf.write(content, tone(0.5, f0=110), 22050)
    sf.write(style, tone(0.7, f0=230, seed=1), 22050)
    assert train.main(["-content", str(content), "-style", str(style), "-epochs", "4",
                       "-griffin_lim_iters", "2", "-device", "cpu",
                       "-output", str(tmp_path / "cli")]) == 0
    result = train.VoiceTransfer(**QUICK).transfer(str(content), str(style), progress=False)
    result.save(str(tmp_path / "api" / "low_as_high.wav"))
    for name in ("low_as_high.wav", "low_as_high_spectrograms.png"):
        with open(tmp_path / "cli" / name, "rb") as a, open(tmp_path / "api" / name, "rb") as b:
            assert a.read() == b.read(), name


def test_the_stages_compose_to_transfer(tone):
    vt = train.VoiceTransfer(**QUICK)
    content, style = tone(0.5, f0=110), tone(0.7, f0=230, seed=1)
    result = vt.transfer(content, style, progress=False)
    content_specs, style_spec = vt.spectrograms([vt.load(content)], vt.load(style))
    assert content_specs[0].shape == (utils.N_FFT // 2 + 1, utils.frame_count(len(content)))
    generated, runs, why = vt.optimise(content_specs, style_spec, progress=False)
    assert np.array_equal(generated[0], result.spectrogram) and why == result.why
    assert runs[0][1][0] == result.history[0][1]
    assert np.array_equal(vt.vocode(generated[0], content), result.audio)
    assert result.content is None and result.style is None  # arrays: no paths to record


def test_arrays_at_any_rate_and_layout_load_as_files_do(tmp_path, tone):
    vt = train.VoiceTransfer(**QUICK)
    stereo = np.stack([tone(0.5, sr=44100), tone(0.5, sr=44100, seed=3)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 44100, subtype="FLOAT")
    from_file = utils.load_audio(str(tmp_path / "stereo.wav"))
    assert np.array_equal(vt.load((stereo, 44100)), from_file)
    assert np.array_equal(vt.load((stereo.T, 44100)), from_file)  # (channels, samples)
    assert np.array_equal(vt.load(tmp_path / "stereo.wav"), from_file)  # a Path
    with pytest.raises(utils.AudioError, match="sample rate must be a positive whole number"):
        vt.load((stereo, 44.1))
    with pytest.raises(utils.AudioError, match="audio array: is silent"):
        vt.load(np.zeros(4096, np.float32))


def test_a_batch_gives_a_result_per_clip(tone):
    vt = train.VoiceTransfer(**QUICK)
    clips = [tone(0.5, f0=110), tone(0.6, f0=150, seed=2)]
    results = vt.transfer(clips, tone(0.7, f0=230, seed=1), progress=False)
    assert [len(r.audio) for r in results] == [len(c) for c in clips]
    alone = vt.transfer(clips[1], tone(0.7, f0=230, seed=1), progress=False)
    assert np.array_equal(results[1].spectrogram, alone.spectrogram)  # L-BFGS: each its own
