"""bench.py ends as every other script does: one line and status 2 on a bad input or
setting, one line and 130 on Ctrl-C with the figures printed so far left in place."""
import bench


def test_an_unreadable_content_is_one_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    assert bench.main(["-content", str(bad), "-device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("bench.py: error: ")
    assert "Traceback" not in err and out == ""


def test_an_unknown_length_is_named_before_anything_runs(capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(bench, "real_lengths", lambda *a: ran.append(a))
    assert bench.main(["-lengths", "short,songs"]) == 2
    _, err = capsys.readouterr()
    assert err == ("bench.py: error: -lengths: songs: not one of short, sentence, dev, "
                   "music, growth, loop, huge\n")
    assert ran == []


def test_ctrl_c_keeps_the_figures_printed_and_exits_130(capsys, monkeypatch):
    def measured_then_stopped(which, folder, reference_audio):
        print("short pair: 7.0 s")
        raise KeyboardInterrupt
    monkeypatch.setattr(bench, "real_lengths", measured_then_stopped)
    assert bench.main(["-lengths", "short,music"]) == 130
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "short pair: 7.0 s"
    assert err == "bench.py: interrupted\n"
