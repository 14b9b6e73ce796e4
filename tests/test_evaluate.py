"""evaluate.py: the measures on cases with known answers, and the command line.

Uses only the clips the project ships in input/ (flite speech, 16 kHz, 2.3-2.7 s).
"""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import evaluate
import train
import utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MALE, FEMALE, AWB = (os.path.join(REPO, "input", f) for f in ("male.wav", "female.wav",
                                                               "male_awb.wav"))
# A clip against its own 50-iteration Griffin-Lim reconstruction from random phase measured
# 1.55-1.88 dB on the three clips in input/ and two real recordings, over 3 seeds each; the
# same with no iteration (random phase, one inverse STFT) measured 5.9-6.8 dB. 3 dB holds
# the first with room and fails the second, so it tells a converged Griffin-Lim apart.
GRIFFIN_LIM_LSD_BOUND_DB = 3.0


@pytest.fixture(scope="module")
def encoder():
    return evaluate.load_encoder()


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def griffin_lim_copy(source, folder, name):
    """A Griffin-Lim rebuild of `source` laid out as train.py -save_spectrogram leaves it."""
    y = utils.load_audio(source)
    spec = utils.log_spectrogram(y)
    wav = os.path.join(folder, name + ".wav")
    utils.save_wav(wav, utils.griffin_lim(spec, len(y), iters=50))
    np.save(os.path.join(folder, name + "_spectrogram.npy"), spec)
    return wav


# ------------------------------------------------------------------------------ the measures

def test_identical_clips_have_similarity_one(encoder):
    y = utils.load_audio(MALE, sr=evaluate.ENCODER_RATE)
    same = evaluate.speaker_similarity(evaluate.speaker_embedding(y, encoder),
                                       evaluate.speaker_embedding(y.copy(), encoder))
    assert same == pytest.approx(1.0, abs=1e-5)
    other = evaluate.speaker_similarity(evaluate.speaker_embedding(y, encoder),
                                        evaluate.speaker_embedding(
                                            utils.load_audio(FEMALE, sr=evaluate.ENCODER_RATE), encoder))
    assert other < 0.9  # and it does tell two voices apart


def test_identical_clips_have_stoi_one():
    y = utils.load_audio(MALE, sr=evaluate.STOI_RATE)
    assert evaluate.stoi_score(y, y.copy()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("delay_s, low, high", [
    (0.3, 1 - 1e-6, 1 + 1e-6),  # late by a whole number of envelope hops: exact
    (0.123, 0.98, 1.0),  # late by 1230 samples: aligned to within 20 (measured 0.991)
    (-0.35, 0.9, 0.99),  # early: its first 0.2 s of speech is gone (measured 0.968)
])
def test_stoi_aligns_a_shifted_clip(delay_s, low, high):
    y = utils.load_audio(MALE, sr=evaluate.STOI_RATE)
    shift = int(round(abs(delay_s) * evaluate.STOI_RATE))
    moved = np.concatenate([np.zeros(shift, np.float32), y]) if delay_s > 0 else y[shift:]
    assert low <= evaluate.stoi_score(moved, y) <= high
    # Without the alignment the same clip scores near 0: the shift is what is measured.
    cut = np.zeros_like(y)
    cut[:min(len(y), len(moved))] = moved[:len(y)]
    _, pystoi = evaluate.eval_packages()
    assert pystoi.stoi(y, cut, evaluate.STOI_RATE) < 0.2


def test_log_spectral_distance_of_griffin_lim_is_under_the_bound():
    y = utils.load_audio(MALE)
    spec = utils.log_spectrogram(y)
    rebuilt = utils.log_spectrogram(utils.griffin_lim(spec, len(y), iters=50))
    unconverged = utils.log_spectrogram(utils.griffin_lim(spec, len(y), iters=1))
    assert evaluate.log_spectral_distance(spec, spec) == 0.0
    assert evaluate.log_spectral_distance(spec, rebuilt) < GRIFFIN_LIM_LSD_BOUND_DB
    assert evaluate.log_spectral_distance(spec, unconverged) > GRIFFIN_LIM_LSD_BOUND_DB


@pytest.mark.parametrize("reference, heard, rate", [
    ("open the window", "open the window", 0),
    ("open the window", "open a window", 1 / 3),  # one substitution
    ("open the window", "open window", 1 / 3),  # one deletion
    ("open the window", "open the big window", 1 / 3),  # one insertion
    ("open the window", "", 1),  # everything deleted
    ("a b", "b a", 1),  # two edits either way
    ("the air is warm", "there is a warm", 3 / 4),  # the air -> there, + a: 3 edits
    ("a", "x y z", 3),  # insertions can take it past 1
])
def test_word_error_rate_by_hand(reference, heard, rate):
    assert evaluate.word_error_rate(reference.split(), heard.split()) == pytest.approx(rate)


def test_word_error_rate_of_no_reference_words_is_none():
    assert evaluate.word_error_rate([], ["anything"]) is None


def test_recogniser_hears_the_example_sentence():
    """input/male.wav says "Open the window, the air is warm." (input/README.md); the
    recogniser heard "open the window theory is warm": 2 edits in 7 words."""
    heard = evaluate.transcript(utils.load_audio(MALE, sr=evaluate.ENCODER_RATE))
    said = "open the window the air is warm".split()
    assert evaluate.word_error_rate(said, heard) < 0.5
    assert evaluate.word_error_rate("she sells bright shells by the sea".split(), heard) > 0.8


def test_dnsmos_rates_a_clean_clip_above_it_with_noise_added():
    """Measured on input/male.wav: overall 3.13 clean, 1.84 with noise at -26 dBFS;
    background 4.07 and 1.80."""
    y = utils.load_audio(MALE, sr=evaluate.ENCODER_RATE)
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(y)).astype(np.float32)
    clean, noisy = evaluate.dnsmos(y), evaluate.dnsmos(np.clip(y + noise, -1, 1))
    assert all(1 <= v <= 5 for v in [*clean.values(), *noisy.values()])
    assert clean["dnsmos_ovrl"] > noisy["dnsmos_ovrl"] + 0.5
    assert clean["dnsmos_bak"] > noisy["dnsmos_bak"] + 0.5
    # speechmos refuses samples past [-1, 1]; the clip is scaled into it, not refused
    loud = evaluate.dnsmos(1.5 * y / np.max(np.abs(y)))
    assert 1 <= loud["dnsmos_ovrl"] <= 5


# ------------------------------------------------------------------------------ command line

def test_cli_table_and_csv(tmp_path):
    copy = str(shutil.copy(MALE, tmp_path / "copy.wav"))
    rebuilt = griffin_lim_copy(MALE, tmp_path, "male_gl")
    table = tmp_path / "rows.csv"
    done = run_cli(MALE, FEMALE, copy, rebuilt, AWB, "-csv", str(table))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == evaluate.COLUMNS
    shown = {line.split()[0]: dict(zip(evaluate.COLUMNS[1:], line.split()[1:]))
             for line in lines[1:]}
    assert list(shown) == [copy, rebuilt, AWB]
    assert shown[copy]["sim_content"] == "1.000" and shown[copy]["stoi"] == "1.000"
    assert shown[copy]["wer"] == "0.000" and shown[copy]["lsd_db"] == "-"
    assert float(shown[rebuilt]["lsd_db"]) < GRIFFIN_LIM_LSD_BOUND_DB
    assert shown[AWB]["lsd_db"] == "-"
    assert float(shown[AWB]["wer"]) > 0.5  # other words
    for cells in shown.values():
        assert all(1 <= float(cells[k]) <= 5 for k in ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak"))

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == list(shown)
    for row in rows:  # the CSV holds the table's figures, at more precision
        assert float(row["margin"]) == pytest.approx(
            float(row["sim_style"]) - float(row["sim_content"]), abs=2e-6)
        for column, cell in shown[row["file"]].items():
            if cell == "-":
                assert row[column] == "", column
            else:
                assert float(row[column]) == pytest.approx(float(cell), abs=0.0051), column


def test_finds_the_spectrogram_train_py_saved(tmp_path, encoder):
    assert train.main(["-content", MALE, "-style", FEMALE, "-epochs", "2", "-save_spectrogram",
                       "-output", str(tmp_path)]) == 0
    wav = str(tmp_path / "male_as_female.wav")
    [row] = evaluate.evaluate(MALE, FEMALE, [wav], encoder=encoder)
    assert row["file"] == wav and row["lsd_db"] >= 0


# ------------------------------------------------------------------------------ errors

def test_missing_file_is_one_line_without_traceback(tmp_path):
    done = run_cli(MALE, FEMALE, str(tmp_path / "nope.wav"))
    assert done.returncode == 2
    assert done.stderr == f"evaluate.py: error: {tmp_path / 'nope.wav'}: no such file\n"
    assert done.stdout == ""


@pytest.mark.parametrize("position", [0, 1, 2])  # as content, style, generated
def test_every_bad_file_is_a_one_line_error(bad_files, position, capsys):
    for path, words in bad_files.values():
        argv = [MALE, FEMALE, MALE]
        argv[position] = str(path)
        assert evaluate.main(argv) == 2
        out, err = capsys.readouterr()
        assert err.startswith(f"evaluate.py: error: {path}") and words in err, err
        assert err.count("\n") == 1 and out == ""


def test_bad_spectrogram_or_csv_is_a_one_line_error(tmp_path, capsys):
    beside = shutil.copy(MALE, tmp_path / "gen.wav")
    (tmp_path / "gen_spectrogram.npy").write_bytes(b"not numpy")
    flat = shutil.copy(MALE, tmp_path / "flat.wav")
    np.save(tmp_path / "flat_spectrogram.npy", np.zeros((3, 4)))
    cases = [([str(beside)], "gen_spectrogram.npy: not a readable .npy array"),
             ([str(flat)], "is not a log spectrogram of 257 bins"),
             ([MALE, "-csv", str(tmp_path)], "is a folder, not a file"),
             ([MALE, "-csv", str(tmp_path / "no" / "x.csv")], "cannot write there")]
    for argv, words in cases:
        assert evaluate.main([MALE, FEMALE, *argv]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("evaluate.py: error: ") and words in err, err
        assert err.count("\n") == 1 and out == ""


@pytest.mark.parametrize("package", ["resemblyzer", "speechmos", "pocketsphinx"])
def test_missing_package_names_it_and_the_fix(monkeypatch, capsys, package):
    for name in [m for m in sys.modules if m.split(".")[0] == package] + [package]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import <package>` fail
    assert evaluate.main([MALE, FEMALE, MALE]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"evaluate.py: error: missing package {package}")
    assert "pip install -r requirements-eval.txt" in err and err.count("\n") == 1
    assert out == ""  # found before any measuring


def test_ctrl_c_keeps_the_rows_measured(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the second clip is measured: the first clip's row is printed and in
    the CSV, one line says how far it got, status 130 (it was a traceback)."""
    real, calls = evaluate.stoi_score, []

    def second_interrupted(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(evaluate, "stoi_score", second_interrupted)
    table = tmp_path / "rows.csv"
    assert evaluate.main([MALE, FEMALE, MALE, AWB, "-csv", str(table)]) == 130
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["file", MALE]
    assert err == "evaluate.py: interrupted after 1 of 2 clips\n"
    with open(table, newline="") as f:
        assert [r["file"] for r in csv.DictReader(f)] == [MALE]


def test_ctrl_c_before_any_row_is_one_line(tmp_path, monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "load_encoder", interrupted)
    assert evaluate.main([MALE, FEMALE, MALE, "-csv", str(tmp_path / "rows.csv")]) == 130
    assert capsys.readouterr() == ("", "evaluate.py: interrupted\n")
    assert os.listdir(tmp_path) == []


def test_csv_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    """A name too long is found before the measuring; a full disk when the CSV is written
    (a writer that fails by construction) gets the same one line."""
    long_name = tmp_path / ("r" * 256 + ".csv")
    assert evaluate.main([MALE, FEMALE, MALE, "-csv", str(long_name)]) == 2
    assert capsys.readouterr() == ("", f"evaluate.py: error: {long_name}: cannot write "
                                       f"(File name too long)\n")

    def full_disk(path, rows):
        def write(tmp):
            open(tmp, "w").write("file,sim")
            raise OSError(28, "No space left on device")
        utils.atomic_write(path, write)
    monkeypatch.setattr(evaluate, "write_csv", full_disk)
    table = tmp_path / "rows.csv"
    assert evaluate.main([MALE, FEMALE, MALE, "-csv", str(table)]) == 2
    out, err = capsys.readouterr()
    assert err == f"evaluate.py: error: {table}: cannot write (No space left on device)\n"
    assert os.listdir(tmp_path) == []
