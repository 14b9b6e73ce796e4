"""compare.py: settings side by side on pairs, judged, with readers' margins."""
import csv
import os

import numpy as np
import pytest
import soundfile as sf

import compare
import evaluate
import utils

FAST = "-epochs 3 -griffin_lim_iters 2"


@pytest.fixture
def reference_audio(tmp_path, tone):
    """The reference pairs' names, as short tones: low 'boys', high 'girls'."""
    folder = tmp_path / "reference-audio"
    folder.mkdir()
    for name, f0, seconds in [("boy18", 110, 0.5), ("girl52", 230, 0.6), ("boy", 120, 0.6),
                              ("girl", 220, 0.5)]:
        sf.write(folder / f"{name}.wav", tone(seconds, f0=f0, seed=f0), 22050)
    return str(folder)


@pytest.fixture
def readers(tmp_path, tone):
    """Two readers of three utterances each, in speaker folders as in dev-speech."""
    folder = tmp_path / "dev"
    for reader, f0 in (("11", 110), ("22", 240)):
        (folder / reader).mkdir(parents=True)
        for i in range(3):
            sf.write(folder / reader / f"{reader}-1-000{i}.flac",
                     tone(1.0 + 0.2 * i, sr=16000, f0=f0 * (1 + 0.05 * i), seed=i), 16000)
    return folder


def test_a_setting_is_a_name_and_train_flags():
    assert compare.setting("w30=-style_weight 30 -phase content") == (
        "w30", ["-style_weight", "30", "-phase", "content"])
    assert compare.setting("default=") == ("default", [])
    for bad in ("-style_weight 30", "=-epochs 3", "a b=-epochs 3"):
        with pytest.raises(Exception, match="give NAME=FLAGS"):
            compare.setting(bad)


@pytest.mark.parametrize("argv, words", [
    (["-pairs", "reference,films"], "-pairs: 'films' is not a group"),
    (["-pairs", "dev:0"], "-pairs: 'dev:0' is not a group"),
    (["-setting", "bad=-style_weight -3"], "bad: argument -style_weight: must be >= 0, got -3"),
    (["-pairs", "dev", "-dev_speech", "/nowhere"], "/nowhere/1688/1688-142285-0004.flac: not found"),
    (["-seeds", "0,x"], "-seeds: not a comma-separated list of seeds"),
])
def test_errors_are_one_line_before_any_work(argv, words, reference_audio, tmp_path, capsys):
    out = tmp_path / "out"
    assert compare.main(["-reference_audio", reference_audio, "-output", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"compare.py: error: {words}") and err.count("\n") == 1
    assert not out.exists()


def test_an_output_that_cannot_be_a_folder_is_refused_first(reference_audio, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.setattr(compare, "run_one", lambda *_: pytest.fail("ran before the check"))
    taken = tmp_path / "a file"
    taken.write_text("")
    assert compare.main(["-reference_audio", reference_audio, "-pairs", "reference",
                         "-output", str(taken)]) == 2
    assert capsys.readouterr().err == (f"compare.py: error: {taken}: cannot create output "
                                       f"folder (File exists)\n")


def test_compare_end_to_end(reference_audio, tmp_path, capsys):
    out = tmp_path / "out"
    status = compare.main(["-pairs", "reference", "-seeds", "0,1", "-reference_audio",
                           reference_audio, "-output", str(out), "-setting", f"default={FAST}",
                           "-setting", f"heavy={FAST} -style_weight 100 -init content"])
    assert status == 0
    stdout = capsys.readouterr().out.splitlines()
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == compare.COLUMNS
    assert [(r["pair"], r["setting"], r["seed"]) for r in rows] == [
        (pair, setting, seed) for pair in ("boy18 -> girl52", "boy -> girl")
        for setting in ("default", "heavy") for seed in ("0", "1")]
    for r in rows:
        assert float(r["margin"]) == pytest.approx(
            float(r["sim_style"]) - float(r["sim_content"]), abs=1e-5)
        assert os.path.dirname(r["file"]) == str(out) and os.path.exists(r["file"])
    # the summary: each pair's means over the two seeds, its time against the default's
    line = next(l for l in stdout if l.startswith("boy18 -> girl52 heavy"))
    cells = line.split()
    both = [r for r in rows if r["pair"] == "boy18 -> girl52" and r["setting"] == "heavy"]
    assert int(cells[4]) == 2
    assert float(cells[7]) == pytest.approx(np.mean([float(r["margin"]) for r in both]),
                                            abs=1e-3)
    default = next(l for l in stdout if l.startswith("boy18 -> girl52 default")).split()
    assert default[6] == "1.00x"
    assert any(l.startswith("mean over the reference pairs: heavy") for l in stdout)
    assert os.path.exists(out / "index.html")


def test_ctrl_c_keeps_the_runs_measured(reference_audio, tmp_path, monkeypatch, capsys):
    real, calls = compare.run_one, []

    def stopped_at_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(compare, "run_one", stopped_at_the_second)
    out = tmp_path / "out"
    status = compare.main(["-pairs", "reference", "-seeds", "0", "-reference_audio",
                           reference_audio, "-output", str(out), "-setting", f"fast={FAST}"])
    assert status == 130
    with open(out / "compare.csv", newline="") as f:
        assert [r["pair"] for r in csv.DictReader(f)] == ["boy18 -> girl52"]
    assert "keeping the 1 run(s) measured" in capsys.readouterr().err


def test_reader_margin_leaves_the_pair_out(readers, tmp_path):
    """Each reader's voice is the mean d-vector of their other utterances: with the pair's
    clips left out, by hand."""
    encoder = evaluate.load_encoder()
    content, style = str(readers / "11" / "11-1-0000.flac"), str(readers / "22" / "22-1-0001.flac")
    result = tmp_path / "result.wav"
    utils.save_wav(str(result), utils.load_audio(content))
    sim_style, sim_content = compare.ReaderMargin(encoder)(str(result), content, style)

    def voice(paths):
        mean = np.mean([evaluate.speaker_embedding(
            utils.load_audio(str(p), sr=evaluate.ENCODER_RATE), encoder) for p in paths], axis=0)
        return mean / np.linalg.norm(mean)
    embedding = evaluate.speaker_embedding(
        utils.load_audio(str(result), sr=evaluate.ENCODER_RATE), encoder)
    others = lambda reader, left: [readers / reader / f"{reader}-1-000{i}.flac"
                                   for i in range(3) if i != left]
    similarity = lambda voice_: float(embedding @ voice_ / np.linalg.norm(embedding))
    assert sim_style == pytest.approx(similarity(voice(others("22", 1))), abs=1e-6)
    assert sim_content == pytest.approx(similarity(voice(others("11", 0))), abs=1e-6)
    # the content clip itself is not in its reader's voice: similar, not identical
    assert sim_content < 0.9999


def test_both_names_the_reference_pairs_and_the_dev_pairs(monkeypatch):
    """The help's 'both': what the default (reference,dev) gives."""
    monkeypatch.setattr(compare.os.path, "exists", lambda path: True)

    def names(which):
        return [p[0] for p in compare.pairs(which, "ref", "dev")]
    assert names("both") == names("reference,dev") == names("reference") + names("dev")
    assert len(names("both")) == 2 + len(compare.DEV_PAIRS)
