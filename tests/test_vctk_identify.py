"""vctk_identify.py: corpus layouts, the split, exact Gram distances, and its errors.

The corpora are made here: synthetic speakers, each a pitch and a vocal-tract length
(formants scaled together), saying a few vowels per utterance: an impulse train through
three resonators. No network, no external program.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import vctk_identify as vi
from conftest import ROOT
from model import RandomCNN, gram_over_time

SPEAKERS = {"p225": (105, 1.00), "p226": (150, 0.88), "p227": (205, 1.12), "p228": (270, 1.25)}
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
          (640, 1190, 2390)]  # F1-F3 in Hz, after Peterson and Barney
UTTERANCES = 10


def resonator(freq, bandwidth, sr, seconds=0.03):
    """Impulse response of a two-pole resonator: a sinusoid decaying at its bandwidth."""
    n = np.arange(int(seconds * sr))
    return np.exp(-np.pi * bandwidth * n / sr) * np.sin(2 * np.pi * freq * n / sr)


def utterance(pitch, scale, rng, sr, vowels=3, seconds=0.12):
    pieces = []
    for vowel in rng.choice(len(VOWELS), vowels, replace=False):
        n = int(seconds * sr)
        source = np.zeros(n)
        source[np.arange(0, n, sr / (pitch * rng.uniform(0.95, 1.05))).astype(int)] = 1.0
        y = source
        for formant, bandwidth in zip(VOWELS[vowel], (90, 110, 150)):
            y = np.convolve(y, resonator(formant * scale, bandwidth, sr))[:n]
        pieces.append(y / np.abs(y).max())
    y = np.concatenate(pieces) * rng.uniform(0.25, 0.35)
    return (y + 1e-3 * rng.standard_normal(len(y))).astype(np.float32)


def speak(speaker, k, sr):
    pitch, scale = SPEAKERS[speaker]
    return utterance(pitch, scale, np.random.default_rng([int(speaker[1:]), k]), sr)


def write_vctk(root, version, speakers=SPEAKERS, utterances=UTTERANCES):
    """VCTK's layout: 0.80 wav48/pNNN/pNNN_MMM.wav, 0.92 wav48_silence_trimmed/pNNN/
    pNNN_MMM_mic1.flac (and mic2); speaker-info.txt lists 0.80's IDs without the 'p'.
    The list is in reverse, to tell its order from the folders' sorted order."""
    os.makedirs(root)
    with open(os.path.join(root, "speaker-info.txt"), "w") as f:
        f.write("ID  AGE  GENDER  ACCENTS  REGION COMMENTS \n")
        for s in reversed(list(speakers)):
            f.write(f"{s if version == '0.92' else s[1:]}  23  F    English    Southern  England\n")
    for s in speakers:
        if version == "0.92":
            folder = os.path.join(root, "wav48_silence_trimmed", s)
            os.makedirs(folder)
            for k in range(1, utterances + 1):
                for mic in (1, 2):
                    sf.write(os.path.join(folder, f"{s}_{k:03d}_mic{mic}.flac"),
                             speak(s, k, 16000), 16000)
        else:
            folder = os.path.join(root, "wav48", s)
            os.makedirs(folder)
            for k in range(1, utterances + 1):
                sf.write(os.path.join(folder, f"{s}_{k:03d}.wav"), speak(s, k, 22050), 22050)
    return root


def write_plain(root, speakers=SPEAKERS, utterances=UTTERANCES):
    for name, s in zip(["alice", "bob", "carol", "dave"], speakers):
        folder = os.path.join(root, name)
        os.makedirs(folder)
        for k in range(1, utterances + 1):
            ext = "flac" if k % 2 else "wav"  # both kinds in one folder
            sf.write(os.path.join(folder, f"take{k:02d}.{ext}"), speak(s, k, 22050), 22050)
    return root


def args(*argv):
    return vi.build_parser().parse_args([str(a) for a in argv])


# ------------------------------------------------------------------------------ exact distances

def explicit(specs, n_train, net):
    """The reference's way: every Gram in full (float64), then each method's distances."""
    grams = [gram_over_time(net(s[None]).double())[0] for s in specs]
    frames = [s.shape[1] for s in specs]
    pairs = [(a, b) for a in range(n_train) for b in range(n_train, len(specs))]

    def table(f):
        return torch.tensor([f(a, b) for a, b in pairs]).view(n_train, -1)
    return {
        "gram": table(lambda a, b: (grams[a] - grams[b]).pow(2).mean().item()),
        "gram_per_frame": table(lambda a, b: (grams[a] / frames[a] - grams[b] / frames[b])
                                .pow(2).mean().item()),
        "gram_cosine": table(lambda a, b: 1 - ((grams[a] * grams[b]).sum()
                                               / (grams[a].norm() * grams[b].norm())).item()),
    }


@pytest.mark.parametrize("group_bins, batch", [(3, 1), (7, 4), (38, 16)])  # 38: one tile
def test_distances_match_explicit_grams(group_bins, batch):
    torch.manual_seed(0)
    net = RandomCNN(3)
    specs = [torch.rand(40, t) * 3 for t in (21, 34, 25, 40, 30, 17)]  # 40 bins: 1216 rows
    cross, norms = vi.gram_products(specs, 4, net, group_bins, batch)
    frames = torch.tensor([s.shape[1] for s in specs], dtype=torch.float64)
    ours = vi.gram_distances(cross, norms, frames, rows=32 * 38)
    for method, expected in explicit(specs, 4, net).items():
        torch.testing.assert_close(ours[method], expected.double(), rtol=1e-5, atol=0)


def test_tiles_fit_the_budget():
    for n in (2, 450, 10_000, 10 ** 7):
        bins = vi.group_bins_for(n, 32, 255)
        assert 1 <= bins <= 255
        assert bins == 1 or (32 * bins) ** 2 * n * 4 <= vi.TILE_BYTES


# ------------------------------------------------------------------------------ split and layouts

def test_split_rules():
    assert vi.is_train(15, None) == [True] * 9 + [False] * 6
    assert vi.is_train(30, None) == ([True] * 9 + [False] * 6) * 2
    assert sum(vi.is_train(100, 60)) == 60 and vi.is_train(100, 60)[:60] == [True] * 60


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {"0.92": write_vctk(str(root / "VCTK-Corpus-0.92"), "0.92"),
            "0.80": write_vctk(str(root / "VCTK-Corpus"), "0.80"),
            "plain": write_plain(str(root / "mine"))}


@pytest.mark.parametrize("layout", ["0.92", "0.80", "plain"])
def test_select_reads_each_layout(corpora, layout):
    train, test = vi.select(corpora[layout], 3, 10, None)
    assert len(train) == 27 and len(test) == 3
    speakers = list(dict.fromkeys(s for s, _ in train))
    assert speakers == (["alice", "bob", "carol"] if layout == "plain"  # by name
                        else ["p228", "p227", "p226"])  # in speaker-info.txt's order
    first = os.path.dirname(train[0][1])
    takes = sorted(f for f in os.listdir(first) if "mic2" not in f)  # mic2: the same takes again
    assert [os.path.basename(p) for s, p in train if s == speakers[0]] == takes[:9]
    assert [os.path.basename(p) for s, p in test if s == speakers[0]] == takes[9:10]


def test_identifies_synthetic_speakers_in_vctk_092(corpora, tmp_path, capsys):
    accuracy = vi.run(args(corpora["0.92"], "-speakers", 4, "-utterances", 6, "-train", 3,
                           "-compare", "-output", tmp_path))
    assert set(accuracy) == set(vi.METHODS)
    assert accuracy["gram"] >= 0.75, accuracy  # chance: 0.25
    out = capsys.readouterr().out
    assert "| 4 | first 6 | 12/12 | Gram, mean squared difference (reference) |" in out
    assert "peak memory" in out
    assert sorted(os.listdir(tmp_path)) == sorted(f"confusion_4x6_{m}.png" for m in vi.METHODS)


def test_identifies_synthetic_speakers_in_vctk_080(corpora, tmp_path):
    accuracy = vi.run(args(corpora["0.80"], "-speakers", 3, "-utterances", 4, "-train", 2,
                           "-output", tmp_path))
    assert accuracy["gram"] >= 0.75, accuracy  # chance: 0.33


# ------------------------------------------------------------------------------ command line

def script(*argv):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "vctk_identify.py"),
                             *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def empty_vctk(root, version="0.92", speakers=("p225", "p226"), utterances=15):
    """VCTK's folders and names with empty files: enough for everything before loading."""
    os.makedirs(root)
    with open(os.path.join(root, "speaker-info.txt"), "w") as f:
        f.write("ID  AGE  GENDER  ACCENTS  REGION\n" + "".join(f"{s}  23  F  English\n"
                                                                for s in speakers))
    audio = "wav48_silence_trimmed" if version == "0.92" else "wav48"
    for s in speakers:
        os.makedirs(os.path.join(root, audio, s))
        for k in range(1, utterances + 1):
            name = f"{s}_{k:03d}_mic1.flac" if version == "0.92" else f"{s}_{k:03d}.wav"
            open(os.path.join(root, audio, s, name), "w").close()
    return root


def case_no_speaker_info(root):
    os.remove(os.path.join(empty_vctk(root), "speaker-info.txt"))
    return [root]


def case_no_audio_folder(root):
    os.makedirs(root)
    open(os.path.join(root, "speaker-info.txt"), "w").write("ID AGE\np225 23\n")
    return [root]


def case_bad_header(root):
    empty_vctk(root)
    open(os.path.join(root, "speaker-info.txt"), "w").write("p225 23 F English\n")
    return [root, "-speakers", 2]


def case_speaker_folder_missing(root):
    empty_vctk(root, version="0.80")
    with open(os.path.join(root, "speaker-info.txt"), "a") as f:
        f.write("999  23  F  English\n")
    return [root, "-speakers", 3]


def case_no_audio_files(root):
    empty_vctk(root)
    folder = os.path.join(root, "wav48_silence_trimmed", "p226")
    for name in os.listdir(folder):
        os.rename(os.path.join(folder, name), os.path.join(folder, name.replace("mic1", "mic2")))
    return [root, "-speakers", 2]


def case_bad_audio(root):
    empty_vctk(root)  # the files are there, and empty
    return [root, "-speakers", 2]


def case_plain_empty_speaker(root):
    os.makedirs(os.path.join(root, "alice"))
    os.makedirs(os.path.join(root, "bob"))
    for k in range(15):
        open(os.path.join(root, "alice", f"{k}.wav"), "w").close()
    return [root, "-speakers", 2]


def case_nested(root):
    empty_vctk(os.path.join(root, "VCTK-Corpus"))
    return [root]


def case_is_a_file(root):
    os.makedirs(root)
    open(os.path.join(root, "corpus.zip"), "w").close()
    return [os.path.join(root, "corpus.zip")]


CASES = {  # name: (make the corpus and return the arguments, what the error line says)
    "missing path": (lambda root: [os.path.join(root, "nowhere")], "no such folder"),
    "path is a file": (case_is_a_file, "is a file"),
    "empty folder": (lambda root: os.makedirs(root) or [root], "nor a folder of speaker"),
    "nested corpus": (case_nested, "did you mean"),
    "no speaker-info.txt": (case_no_speaker_info, "speaker-info.txt: missing"),
    "no audio folder": (case_no_audio_folder, "neither wav48_silence_trimmed/"),
    "speaker-info without header": (case_bad_header, "no 'ID AGE GENDER ...' header"),
    "speaker folder missing": (case_speaker_folder_missing, "p999: missing"),
    "no audio files": (case_no_audio_files, "p226: no audio files (*_mic1.flac)"),
    "plain speaker without audio": (case_plain_empty_speaker, "bob: no audio files"),
    "too few speakers": (lambda root: [empty_vctk(root), "-speakers", 3],
                         "2 speakers, -speakers asks for 3"),
    "too few utterances": (lambda root: [empty_vctk(root, utterances=12), "-speakers", 2],
                           "12 utterances, -utterances asks for 15"),
    "no test utterance (9 of 15)": (lambda root: [empty_vctk(root), "-speakers", 2,
                                                  "-utterances", 9], "leaves no test utterance"),
    "no test utterance (-train)": (lambda root: [empty_vctk(root), "-speakers", 2,
                                                 "-train", 15], "leaves no test utterance"),
    "unreadable audio": (case_bad_audio, "not a readable audio file"),
}


@pytest.mark.parametrize("case", CASES)
def test_malformed_corpus_gets_one_error_line(tmp_path, capsys, case):
    make, expected = CASES[case]
    argv = make(str(tmp_path / "corpus")) + ["-output", tmp_path / "out"]
    status = vi.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    # A bad audio file is found while loading: after the corpus line and the progress bar.
    assert len(lines) == 1 or case == "unreadable audio", err
    assert lines[-1].startswith("vctk_identify.py: error: ") and expected in lines[-1], err
    assert not (tmp_path / "out").exists()  # made for a run that failed: removed again


def test_a_folder_where_a_picture_goes_fails_before_the_work(corpora, tmp_path, capsys):
    blocked = tmp_path / "out" / "confusion_3x4_gram.png"
    blocked.mkdir(parents=True)
    assert vi.main([corpora["plain"], "-speakers", "3", "-utterances", "4", "-train", "2",
                    "-device", "cpu", "-output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"vctk_identify.py: error: {blocked}: cannot write (Is a directory)"
    assert not any("audio" in line or "Gram" in line for line in err)  # nothing was loaded


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without CUDA")
def test_cuda_asked_for_without_one(corpora, tmp_path, capsys):
    assert vi.main([corpora["plain"], "-device", "cuda", "-output", str(tmp_path)]) == 2
    assert "-device cuda: no CUDA device" in capsys.readouterr().err


def test_seed_out_of_range_is_refused_while_parsing(capsys):
    """The same seed parser as train.py's: torch takes no seed outside 64 bits, numpy
    none below 0."""
    for bad, words in (("-1", "must be >= 0, got -1"),
                       (str(2 ** 64), f"must be <= {2 ** 64 - 1}")):
        with pytest.raises(SystemExit) as e:
            vi.build_parser().parse_args(["corpus", "-seed", bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and words in err, err
    assert vi.build_parser().parse_args(["corpus", "-seed", str(2 ** 64 - 1)]).seed == 2 ** 64 - 1


@pytest.fixture(scope="module")
def cli(tmp_path_factory, corpora):
    """The script run as a user runs it, three ways at once: each process pays for
    importing torch, and side by side they pay for it once per core."""
    root = tmp_path_factory.mktemp("cli")
    runs = {"ok": script(corpora["plain"], "-speakers", 3, "-utterances", 4, "-train", 2,
                         "-output", root / "ok"),
            "missing path": script(root / "nowhere"),
            "bad flag": script(corpora["plain"], "-speakers", "1")}
    return root, {name: (*p.communicate(timeout=300), p.returncode) for name, p in runs.items()}


@pytest.mark.parametrize("case, expected", [("missing path", "no such folder"),
                                            ("bad flag", "argument -speakers: must be >= 2")])
def test_command_line_error_is_one_line_and_status_2(cli, case, expected):
    out, err, status = cli[1][case]
    assert status == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith("vctk_identify.py: error: "), err
    assert expected in err


def test_command_line_run_on_plain_folders(cli):
    root, results = cli
    out, err, status = results["ok"]
    assert status == 0, err
    assert "speaker folders at" in err and "Gram tiles" in err  # the layout and a progress bar
    row = next(line for line in out.splitlines() if "Gram, mean squared" in line)
    assert row.startswith("| 3 | first 4 | 6/6 |")
    assert float(row.split("|")[-2].strip().rstrip("%")) >= 75  # chance: 33%
    assert os.listdir(root / "ok") == ["confusion_3x4_gram.png"]
    assert "time:" in out and "GiB resident" in out
