"""report.py: the record beside each result and the listening page, through train.py,
sweep.py and evaluate.py, on short synthetic clips."""
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

import report
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
