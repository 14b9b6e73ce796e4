"""sweep.py: a style-weight sweep end to end on the shipped clips, and its errors."""
import csv
import os
import subprocess
import sys

import pytest

import sweep
import train
from conftest import ROOT

MALE, FEMALE = (os.path.join(ROOT, "input", f) for f in ("male.wav", "female.wav"))


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_sweep_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "sweep.py"), "-content", MALE, "-style", FEMALE,
         "-weights", "100,0.5", "-epochs", "40", "-griffin_lim_iters", "8", "-init", "content",
         "-output", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    png, table = out / "sweep_male_female.png", out / "sweep_male_female.csv"
    assert result.stdout.strip().splitlines()[-2:] == [str(table), str(png)]
    assert _is_png(png) and os.path.getsize(png) > 10_000

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == sweep.COLUMNS
    assert [r["style_weight"] for r in rows] == ["0.5", "100"]  # sorted, as given
    for r in rows:
        margin, stoi = float(r["margin"]), float(r["stoi"])
        sim_style, sim_content = float(r["sim_style"]), float(r["sim_content"])
        assert margin == pytest.approx(sim_style - sim_content, abs=1e-5)
        assert -1 <= sim_style <= 1 and -1 <= sim_content <= 1
        assert 0 < stoi <= 1
        assert float(r["wer"]) >= 0 and 1 <= float(r["dnsmos_ovrl"]) <= 5
        assert float(r["seconds"]) > 0
        assert os.path.exists(r["file"]) and r["file"].endswith(".wav")
        assert os.path.dirname(r["file"]) == str(out / "sweep_male_female")
    # from the content itself, the heavier style weight pulls the spectrogram further off
    # it: words are lost
    low, high = rows
    assert float(high["content_loss"]) > float(low["content_loss"])
    assert float(high["stoi"]) < float(low["stoi"])


def test_weights_must_be_numbers(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.build_parser().parse_args(["-weights", "1,x"])
    assert e.value.code == 2
    assert "not a comma-separated list of numbers" in capsys.readouterr().err


def test_style_weight_is_refused(tmp_path, capsys):
    code = sweep.main(["-style_weight", "3", "-output", str(tmp_path / "o"), "-epochs", "1"])
    assert code == 2
    assert "give -weights" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_train_options_pass_through():
    args = sweep.build_parser().parse_args(["-kernel", "3x3", "-phase", "content",
                                            "-weights", "3,1"])
    assert (args.kernel, args.phase, args.weights) == ("3x3", "content", [1.0, 3.0])
    assert (args.optimizer, args.epochs) == ("lbfgs", 300)


def test_seeds_must_be_integers(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.build_parser().parse_args(["-seeds", "0,1.5"])
    assert e.value.code == 2
    assert "not a comma-separated list of integers" in capsys.readouterr().err
    assert sweep.build_parser().parse_args(["-seeds", "2,0,2"]).seeds == [2, 0]
    for bad, words in (("0,-5", "must be >= 0, got -5"),
                       (f"1,{2 ** 64}", f"must be <= {2 ** 64 - 1}")):
        with pytest.raises(SystemExit) as e:
            sweep.build_parser().parse_args(["-seeds", bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err and err.count("\n") == 1, err


def test_each_weight_runs_with_each_seed(tmp_path):
    """-seeds: one row and one wav per weight and seed; the seed changes the result."""
    out = tmp_path / "out"
    code = sweep.main(["-content", MALE, "-style", FEMALE, "-weights", "1", "-seeds", "0,1",
                       "-epochs", "10", "-griffin_lim_iters", "4", "-output", str(out)])
    assert code == 0
    with open(out / "sweep_male_female.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["style_weight"], r["seed"]) for r in rows] == [("1", "0"), ("1", "1")]
    assert [os.path.basename(r["file"]) for r in rows] == [
        "male_as_female_w1_seed0.wav", "male_as_female_w1_seed1.wav"]
    assert rows[0]["style_loss"] != rows[1]["style_loss"]
    assert _is_png(out / "sweep_male_female.png")


def _sweep(argv, capsys):
    code = sweep.main([*argv, "-device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ctrl_c_in_a_run_marks_its_row_and_exits_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the second weight's optimisation: it then returns what the spectrogram
    reached and says it was interrupted; that point is written, marked, and the sweep
    ends there with status 130 (it exited 0, the row unmarked)."""
    real, calls = train.optimise_ensemble, []

    def second_interrupted(*a, **kw):
        calls.append(1)
        result = real(*a, **kw)
        return (*result[:2], "interrupted (Ctrl-C): writing what the spectrogram has reached"
                if len(calls) == 2 else result[2])
    monkeypatch.setattr(train, "optimise_ensemble", second_interrupted)
    out = tmp_path / "out"
    code, stdout, _ = _sweep(["-content", MALE, "-style", FEMALE, "-weights", "1,2,3",
                              "-epochs", "2", "-griffin_lim_iters", "2", "-output", str(out)],
                             capsys)
    assert code == 130 and len(calls) == 2  # the third weight never ran
    rows = _rows(out / "sweep_male_female.csv")
    assert [(r["style_weight"], r["interrupted"]) for r in rows] == [("1", "no"), ("2", "yes")]
    assert stdout.split()[-2:] == [str(out / "sweep_male_female.csv"),
                                   str(out / "sweep_male_female.png")]
    assert "interrupted" in stdout.splitlines()[2] and _is_png(out / "sweep_male_female.png")


def test_ctrl_c_while_measuring_keeps_the_rows_measured(tmp_path, monkeypatch, capsys):
    real, calls = sweep.evaluate.evaluate, []

    def second_interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(sweep.evaluate, "evaluate", second_interrupted)
    out = tmp_path / "out"
    code, _, err = _sweep(["-content", MALE, "-style", FEMALE, "-weights", "1,2", "-epochs", "0",
                           "-griffin_lim_iters", "2", "-output", str(out)], capsys)
    assert code == 130
    assert "interrupted (Ctrl-C): keeping the 1 point(s) measured" in err
    rows = _rows(out / "sweep_male_female.csv")
    assert [r["style_weight"] for r in rows] == ["1"] and rows[0]["interrupted"] == "no"
    # -epochs 0 optimises nothing: no loss to report, and no crash for the want of one
    assert rows[0]["content_loss"] == rows[0]["style_loss"] == ""


def test_a_non_finite_weight_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _sweep(["-content", MALE, "-style", FEMALE, "-weights", "1e308",
                                "-epochs", "5", "-output", str(out)], capsys)
    assert code == 2, err
    assert err.splitlines()[-1].startswith("sweep.py: error: the loss is not finite at step 1")
    assert "Traceback" not in err and not out.exists()


def test_what_the_sweep_will_write_is_checked_first(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "sweep_male_female" / "male_as_female_w2_loss.png").mkdir(parents=True)
    code, stdout, err = _sweep(["-content", MALE, "-style", FEMALE, "-weights", "1,2",
                                "-epochs", "5", "-output", str(out)], capsys)
    assert code == 2 and stdout == ""
    assert err == (f"sweep.py: error: {out / 'sweep_male_female' / 'male_as_female_w2_loss.png'}"
                   f": cannot write (Is a directory)\n")
