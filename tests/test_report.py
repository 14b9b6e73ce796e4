"""report.py: the record beside each result and the listening page, through train.py,
sweep.py and evaluate.py, on short synthetic clips."""
import csv
import html
import html.parser
import json
import os
import shlex
import shutil
import time
import urllib.parse

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

import evaluate
import report
import sweep
import train
import utils

CPU = torch.device("cpu")


@pytest.fixture
def clips(tmp_path, tone):
    """Two content clips (one a flac whose name needs quoting in a link) and a style clip."""
    folder = tmp_path / "in"
    folder.mkdir()
    low, odd, style = folder / "low.wav", folder / "odd clip #1.flac", folder / "high.wav"
    sf.write(low, tone(1.0, sr=16000, f0=110), 16000)
    sf.write(odd, tone(0.9, sr=16000, f0=130, seed=2), 16000)
    sf.write(style, tone(0.6, sr=16000, f0=230, seed=1), 16000)
    return str(low), str(odd), str(style)


class Links(html.parser.HTMLParser):
    """Every src and href on a page, the result rows, and the audio players per row."""

    def __init__(self):
        super().__init__()
        self.links, self.rows = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("class") == "result":
            self.rows.append({"wav": attrs["data-wav"], "audio": [], "img": []})
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(urllib.parse.unquote(attrs[key]))
        if tag in ("audio", "img") and self.rows:
            self.rows[-1][tag].append(urllib.parse.unquote(attrs["src"]))


def read_page(folder):
    page = Links()
    with open(os.path.join(folder, "index.html"), encoding="utf-8") as f:
        text = f.read()
    page.feed(text)
    return page, text


def check_links(folder):
    """Every link on the page is relative, stays inside `folder` and names a readable wav
    or PNG: the folder can be zipped and played anywhere."""
    page, _ = read_page(folder)
    assert page.links
    for link in page.links:
        assert not urllib.parse.urlparse(link).scheme and not os.path.isabs(link), link
        assert not os.path.normpath(link).startswith(".."), link
        path = os.path.join(folder, link)
        assert os.path.isfile(path), link
        if link.endswith(".wav"):
            assert sf.info(path).frames > 0
        else:
            with open(path, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n", link
    return page


def settled(argv, parser=None):
    args = (parser or train.build_parser()).parse_args(argv)
    train.settle_defaults(args)
    return vars(args)


def test_record_holds_what_made_the_result(clips, tmp_path, capsys):
    """The record's settings are the run's with every default resolved; its rerun command
    parses back to them; its losses are the run's: from the content itself the first
    evaluation has content loss exactly 0 and the style loss of the content."""
    content, _, style = clips
    out = tmp_path / "out"
    argv = ["-content", content, "-style", style, "-init", "content", "-epochs", "1",
            "-style_weight", "2.5", "-seed", "3", "-griffin_lim_iters", "2", "-device", "cpu",
            "-output", str(out)]
    start = time.perf_counter()
    assert train.main(argv) == 0
    elapsed = time.perf_counter() - start
    record_file = out / "low_as_high.json"
    assert str(record_file) in capsys.readouterr().out.splitlines()
    assert not (out / "index.html").exists()  # one result: nothing to compare it with
    record = json.loads(record_file.read_text())

    assert record["settings"] == settled(argv)
    assert record["settings"]["epochs"] == 1 and record["settings"]["print_interval"] == 1
    assert settled(shlex.split(record["rerun"])[2:]) == record["settings"]
    assert record["content"] == os.path.abspath(content)
    assert record["style"] == os.path.abspath(style)
    assert record["seeds"] == [3] and record["iterations"] == 1
    assert record["stopped"] == "ran all 1 iterations"
    env = record["environment"]
    assert (env["torch"], env["numpy"], env["librosa"], env["soundfile"], env["device"]) == (
        torch.__version__, np.__version__, librosa.__version__, sf.__version__, "cpu")
    assert 0 < record["seconds"] < elapsed
    assert "measures" not in record

    t = train.Transfer([utils.log_spectrogram(utils.load_audio(content))],
                       utils.log_spectrogram(utils.load_audio(style)), device=CPU, seed=3,
                       init="content", style_weight=2.5)
    _, style_loss = t.losses()
    [run] = record["runs"]
    assert run["seed"] == 3 and run["iterations"] == 1 and run["content_loss"] == 0.0
    assert run["style_loss"] == pytest.approx(style_loss.item(), rel=1e-6)


def test_a_batch_writes_a_page_whose_links_all_play(clips, tmp_path, capsys):
    low, odd, style = clips
    out = tmp_path / "out"
    assert train.main(["-content", low, odd, "-style", style, "-epochs", "2",
                       "-griffin_lim_iters", "2", "-output", str(out)]) == 0
    assert str(out / "index.html") in capsys.readouterr().out.splitlines()
    page = check_links(str(out))
    assert [r["wav"] for r in page.rows] == ["low_as_high.wav", "odd clip #1_as_high.wav"]
    for row, content in zip(page.rows, (low, odd)):
        source, style_link, result = row["audio"]
        assert result == row["wav"]
        assert row["img"] == [row["wav"][:-4] + "_spectrograms.png"]
        # the content's own copy: the wav byte for byte, the flac as what train.py heard
        if content.endswith(".wav"):
            assert (out / source).read_bytes() == open(content, "rb").read()
        else:
            np.testing.assert_allclose(utils.load_audio(str(out / source)),
                                       utils.load_audio(content), atol=1e-4)
        assert (out / style_link).read_bytes() == open(style, "rb").read()
    assert page.rows[0]["audio"][1] == page.rows[1]["audio"][1]  # the style copied once
    assert sorted(os.listdir(out / "sources")) == ["high.wav", "low.wav", "odd clip #1.wav"]

    zipped = tmp_path / "elsewhere"  # moved as a whole, the page still plays
    shutil.copytree(out, zipped)
    shutil.rmtree(out)
    check_links(str(zipped))


def test_rows_show_the_settings_that_differ(tmp_path, tone):
    """Settings equal in every record are listed once; those that differ, in each row."""
    wavs = []
    for w in (1.0, 30.0):
        wav = str(tmp_path / f"r{w:g}.wav")
        utils.save_wav(wav, tone(0.3))
        args = train.build_parser().parse_args(["-style_weight", str(w)])
        train.settle_defaults(args)
        measures = {"margin": 0.1 * w, "stoi": 0.9, "sim_style": 0.5, "sim_content": 0.4,
                    "lsd_db": None} if w > 1 else None
        report.write_record(wav, report.run_record(args, args.content[0], [], 0, "done",
                                                   CPU, 1.0, measures=measures))
        wavs.append(wav)
    records = [report.read_record(w) for w in wavs]
    differ, shared = report.differing_settings(records)
    assert differ == ["style_weight"]
    assert shared["seed"] == 0 and "content" not in shared and "style_weight" not in shared
    report.write_page(str(tmp_path), wavs)
    page = check_links(str(tmp_path))
    _, text = read_page(str(tmp_path))
    rows = text.split('<tr class="result"')[1:]
    assert len(rows) == len(page.rows) == 2
    assert "-style_weight 1.0" in rows[0] and "-style_weight 30.0" in rows[1]
    assert "not measured" in rows[0] and "margin +3.000" in rows[1] and "lsd_db" not in rows[1]


def test_evaluate_takes_content_and_style_from_the_records(clips, tmp_path, capsys):
    """evaluate.py with only the generated clips measures each against the clips its
    record names, as the three-argument form does, and writes the measures into the
    records and the page; measures against other clips leave the record alone."""
    low, odd, style = clips
    out = tmp_path / "out"
    assert train.main(["-content", low, odd, "-style", style, "-epochs", "2",
                       "-griffin_lim_iters", "2", "-output", str(out)]) == 0
    wavs = [str(out / "low_as_high.wav"), str(out / "odd clip #1_as_high.wav")]
    capsys.readouterr()
    assert evaluate.main(wavs) == 0
    shown = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in shown[1:]] == [wavs[0], wavs[1].split()[0]]

    encoder = evaluate.load_encoder()
    for wav, content in zip(wavs, (low, odd)):
        [want] = evaluate.evaluate(content, style, [wav], encoder=encoder)
        got = report.read_record(wav)["measures"]
        for key in report.MEASURES:
            assert got[key] == (None if want[key] is None else pytest.approx(want[key],
                                                                            abs=1e-6)), key
    _, text = read_page(str(out))
    assert text.count("margin ") == 2 and "not measured" not in text
    check_links(str(out))

    before = (out / "low_as_high.json").read_text()
    assert evaluate.main([style, low, wavs[0]]) == 0  # content and style swapped
    assert (out / "low_as_high.json").read_text() == before


def test_evaluate_without_a_record_or_with_a_broken_one_is_one_line(clips, tmp_path, capsys):
    low, _, _ = clips
    wav = shutil.copy(low, tmp_path / "lonely.wav")
    assert evaluate.main([str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no record" in err and "give CONTENT STYLE GENERATED" in err
    (tmp_path / "lonely.json").write_text("{not json")
    assert evaluate.main([str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lonely.json: not a readable run record" in err


def test_sweep_records_its_measures_and_writes_a_page(clips, tmp_path, capsys):
    low, _, style = clips
    out = tmp_path / "out"
    assert sweep.main(["-content", low, "-style", style, "-weights", "1,10", "-epochs", "2",
                       "-griffin_lim_iters", "2", "-output", str(out)]) == 0
    folder = out / "sweep_low_high"
    assert str(folder / "index.html") in capsys.readouterr().out.splitlines()
    page = check_links(str(folder))
    assert "sweep_low_high.png" in page.links  # the trade-off picture, on top
    with open(out / "sweep_low_high.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["wav"] for r in page.rows] == [os.path.basename(r["file"]) for r in rows]
    for row in rows:
        record = report.read_record(row["file"])
        assert record["settings"]["style_weight"] == float(row["style_weight"])
        for key in ("margin", "stoi", "sim_style", "sim_content"):
            assert record["measures"][key] == pytest.approx(float(row[key]), rel=1e-5)
        # the record's rerun is the train.py command for that one row
        rerun = settled(shlex.split(record["rerun"])[2:])
        assert rerun["style_weight"] == float(row["style_weight"])
        assert rerun["epochs"] == 2 and rerun["content"] == [low]
    _, text = read_page(str(folder))
    assert "-style_weight 1.0" in text and "-style_weight 10.0" in text


def test_the_measures_are_evaluate_py_s():
    """report.py names evaluate.py's measures itself (importing evaluate would be a cycle):
    the two lists must not drift apart."""
    assert set(report.MEASURES) == set(evaluate.COLUMNS) - {"file"}


def test_an_ensemble_gets_a_page_and_each_run_in_the_record(clips, tmp_path, capsys):
    low, _, style = clips
    out = tmp_path / "out"
    assert train.main(["-content", low, "-style", style, "-epochs", "2", "-ensemble", "2",
                       "-seed", "5", "-griffin_lim_iters", "2", "-output", str(out)]) == 0
    page = check_links(str(out))
    assert [r["wav"] for r in page.rows] == ["low_as_high.wav"]
    record = report.read_record(str(out / "low_as_high.wav"))
    assert record["seeds"] == [5, 6] and record["iterations"] == 4
    assert [r["iterations"] for r in record["runs"]] == [2, 2]
    assert record["runs"][0]["style_loss"] != record["runs"][1]["style_loss"]  # two networks
    assert "mean of the random CNNs' runs" in html.unescape(read_page(str(out))[1])


def test_a_record_that_cannot_be_written_is_one_line_after_the_table(clips, tmp_path, capsys,
                                                                     monkeypatch):
    """Measuring results in a folder that refuses writes still prints the measures; the
    record that could not take them is named in one line, exit status 2."""
    low, _, style = clips
    out = tmp_path / "out"
    assert train.main(["-content", low, "-style", style, "-epochs", "2",
                       "-griffin_lim_iters", "2", "-output", str(out)]) == 0
    capsys.readouterr()
    before = (out / "low_as_high.json").read_text()

    def refuse(*_, **__):  # the folder takes no new file, not even a temporary one
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(utils.tempfile, "mkstemp", refuse)
    assert evaluate.main([str(out / "low_as_high.wav")]) == 2
    printed, err = capsys.readouterr()
    assert printed.splitlines()[0].split() == evaluate.COLUMNS and len(printed.splitlines()) == 2
    assert err == f"evaluate.py: error: {out / 'low_as_high.json'}: cannot write " \
                  f"(Permission denied)\n"
    assert (out / "low_as_high.json").read_text() == before
