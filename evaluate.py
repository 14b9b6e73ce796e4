"""Measure a voice transfer: whose voice it has, what it still says, what Griffin-Lim lost.

    python evaluate.py CONTENT STYLE GENERATED [GENERATED ...]
    python evaluate.py GENERATED [GENERATED ...]    # each with train.py's record beside it

Prints one row per generated clip, and adds its measures to the clip's record
(<name>.json, which names the content and style clips) and listening page, if it has them:
    sim_style    cosine similarity of its speaker embedding to the style clip's
    sim_content  the same against the content clip's
    margin       sim_style - sim_content: above 0 when it sounds more like the style speaker
    stoi         intelligibility kept from the content (STOI against the content, 1 = all)
    wer          word error rate of the words a recogniser (PocketSphinx, US English) hears
                 in the clip against those it hears in the content: 0 = the same words;
                 "-" when it hears none in the content
    dnsmos_ovrl  DNSMOS P.835 (1-5, higher is better): a network trained on listeners'
    dnsmos_sig   opinion scores rates the overall quality, the speech signal and the
    dnsmos_bak   background (noise) of the clip on its own, with no reference
    lsd_db       log-spectral distance between the spectrogram train.py optimised and the
                 spectrogram of the wav it wrote, i.e. what Griffin-Lim lost; read from
                 <name>_spectrogram.npy beside <name>.wav (train.py -save_spectrogram),
                 "-" when there is none; a wav train.py scaled down so as not to clip
                 (it says so) adds that gain, in dB, to it
The speaker embeddings are Resemblyzer's d-vectors, DNSMOS is speechmos's ONNX models and
the recogniser PocketSphinx's English model; each package ships its trained weights, so
nothing is downloaded. They are judges only: nothing here feeds back into a transfer.
Needs `pip install -r requirements-eval.txt`.
"""
import argparse
import functools
import os
import sys
import warnings

import numpy as np
import scipy.signal

import report
import utils
from cli import OneLineParser, guarded

COLUMNS = ["file", "sim_style", "sim_content", "margin", "stoi", "wer", "dnsmos_ovrl",
           "dnsmos_sig", "dnsmos_bak", "lsd_db"]
DECIMALS = {"dnsmos_ovrl": 2, "dnsmos_sig": 2, "dnsmos_bak": 2, "lsd_db": 2}  # else 3
ENCODER_RATE = 16000  # what Resemblyzer's encoder was trained on; DNSMOS and
# PocketSphinx's model take 16 kHz too, so one load at this rate serves all three
STOI_RATE = 10000  # the rate STOI is defined at; clips are resampled to it once, here
ENVELOPE_WINDOW, ENVELOPE_HOP = 200, 50  # 20 ms frames every 5 ms at STOI_RATE
LSD_RANGE_DB = 80  # magnitudes below the reference's peak minus this count as the floor


class MissingPackage(Exception):
    """An evaluation-only package is not installed; the message says which and how."""


def eval_packages():
    """Import the packages only evaluation needs, or say in one line how to get them."""
    try:
        with warnings.catch_warnings():
            # webrtcvad (Resemblyzer's VAD) warns that pkg_resources is deprecated, and
            # Resemblyzer imports scipy.ndimage.morphology: notices about them, not about us.
            warnings.simplefilter("ignore")
            import pocketsphinx  # noqa: F401 (checked here; load_recogniser uses it)
            import pystoi
            import resemblyzer
            import speechmos.dnsmos  # noqa: F401 (checked here; dnsmos uses it)
    except ImportError as e:
        name = (e.name or str(e)).split(".")[0]  # speechmos.dnsmos: the package speechmos
        if name == "pkg_resources":  # removed from setuptools 81 on; webrtcvad imports it
            name = "setuptools<81 (pkg_resources, which webrtcvad imports)"
        raise MissingPackage(f"missing package {name}: "
                             f"`pip install -r requirements-eval.txt` installs it") from None
    return resemblyzer, pystoi


# ------------------------------------------------------------------------------ speaker

def load_encoder():
    """Resemblyzer's speaker encoder, with the weights from its own package folder."""
    resemblyzer, _ = eval_packages()
    return resemblyzer.VoiceEncoder(device="cpu", verbose=False)


def speaker_embedding(y, encoder):
    """The d-vector (256 values, unit length) of a clip sampled at ENCODER_RATE."""
    resemblyzer, _ = eval_packages()
    wav = resemblyzer.preprocess_wav(y)  # volume to -30 dBFS, long pauses cut by a VAD
    if len(wav) == 0:  # the VAD heard no voice at all (e.g. pure noise): use the whole clip
        wav = resemblyzer.normalize_volume(y, resemblyzer.hparams.audio_norm_target_dBFS,
                                           increase_only=True)
    return encoder.embed_utterance(wav)


def speaker_similarity(a, b):
    """Cosine similarity of two speaker embeddings: 1 for the same voice."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------ intelligibility

def envelope(y):
    """Frame energies, ENVELOPE_WINDOW samples every ENVELOPE_HOP: a phase-blind outline."""
    frames = np.lib.stride_tricks.sliding_window_view(y, ENVELOPE_WINDOW)[::ENVELOPE_HOP]
    return np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))


def align(generated, content):
    """Shift and cut or zero-pad `generated` to line up with `content`, sample for sample.

    train.py writes its wav at the content's length and timing, so clips of equal length
    (to one envelope hop, i.e. resampling rounding) are taken as aligned and only cut or
    padded at the end. Otherwise the lag is the one that maximises the cross-correlation
    of the two energy envelopes (the waveforms themselves do not correlate: Griffin-Lim
    starts from random phase), to ENVELOPE_HOP samples. Whatever part of the content the
    generated clip does not cover becomes silence, so missing speech costs intelligibility.
    """
    lag = 0
    if abs(len(generated) - len(content)) > ENVELOPE_HOP:
        g, c = envelope(generated), envelope(content)
        corr = scipy.signal.correlate(g - g.mean(), c - c.mean(), mode="full", method="fft")
        lag = (int(np.argmax(corr)) - (len(c) - 1)) * ENVELOPE_HOP  # > 0: generated is late
    shifted = generated[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32),
                                                               generated])
    out = np.zeros_like(content)
    out[:min(len(shifted), len(content))] = shifted[:len(content)]
    return out


def stoi_score(generated, content, sr=STOI_RATE):
    """STOI of `generated` against the clean `content` (both at `sr`), after align()."""
    _, pystoi = eval_packages()
    return float(pystoi.stoi(content, align(generated, content), sr))


def word_error_rate(reference, hypothesis):
    """(substitutions + deletions + insertions) / len(reference), the fewest word edits
    that turn the `reference` word list into `hypothesis` (Levenshtein over words); None
    when the reference has no words, where a rate means nothing."""
    if not reference:
        return None
    previous = list(range(len(hypothesis) + 1))  # edits from an empty reference
    for i, word in enumerate(reference, 1):
        current = [i]
        for j, heard in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (word != heard)))
        previous = current
    return previous[-1] / len(reference)


@functools.lru_cache(maxsize=None)
def load_recogniser():
    """PocketSphinx's decoder with the US English model from its own package folder."""
    eval_packages()
    import pocketsphinx
    return pocketsphinx.Decoder(samprate=ENCODER_RATE, loglevel="FATAL")


def transcript(y):
    """The words the recogniser hears in a clip sampled at ENCODER_RATE, lower case."""
    decoder = load_recogniser()
    pcm = (np.clip(y, -1, 1) * 32767).astype("<i2").tobytes()  # it reads 16-bit samples
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    heard = decoder.hyp()
    return heard.hypstr.lower().split() if heard is not None else []


# ------------------------------------------------------------------------------ naturalness

def dnsmos(y):
    """DNSMOS P.835 of a clip sampled at ENCODER_RATE: {"dnsmos_ovrl", "dnsmos_sig",
    "dnsmos_bak"}, each on the 1-5 opinion scale. Clips under 9 s are repeated to 9 s by
    speechmos, as DNSMOS's own scripts do; longer ones are rated in 9 s windows a second
    apart and averaged."""
    eval_packages()
    from speechmos import dnsmos as model
    y = np.asarray(y, np.float32)
    peak = float(np.max(np.abs(y)))
    if peak > 1:  # speechmos refuses samples outside [-1, 1]; resampling can overshoot
        y = y / peak
    scores = model.run(y, ENCODER_RATE)
    return {"dnsmos_ovrl": float(scores["ovrl_mos"]), "dnsmos_sig": float(scores["sig_mos"]),
            "dnsmos_bak": float(scores["bak_mos"])}


# ------------------------------------------------------------------------------ Griffin-Lim loss

def log_spectral_distance(reference, other):
    """Log-spectral distance in dB between two log1p magnitude spectrograms (bins, frames).

    With X = expm1(reference) and Y = expm1(other) the magnitudes, and a floor
    m = max(X) * 10^(-LSD_RANGE_DB / 20) applied to both (so near-silent bins, where any
    error is a huge ratio, count no more than an 80 dB range lets them):
        LSD = mean over frames t of sqrt( mean over bins f of
                  (20 log10 max(X[f,t], m) - 20 log10 max(Y[f,t], m))^2 )
    0 for identical spectrograms. Frames past the shorter one are ignored.
    """
    frames = min(reference.shape[1], other.shape[1])
    x = utils.magnitude(np.asarray(reference)[:, :frames])
    y = utils.magnitude(np.asarray(other)[:, :frames])
    floor = max(x.max(), np.finfo(np.float64).tiny) * 10 ** (-LSD_RANGE_DB / 20)
    diff = 20 * np.log10(np.maximum(x, floor)) - 20 * np.log10(np.maximum(y, floor))
    return float(np.mean(np.sqrt(np.mean(diff ** 2, axis=0))))


def saved_spectrogram(wav_path):
    """The optimised spectrogram train.py -save_spectrogram left beside `wav_path`, or None."""
    path = os.path.splitext(wav_path)[0] + "_spectrogram.npy"
    if not os.path.exists(path):
        return None
    try:
        spec = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # numpy's own reasons talk about pickles; this says it
        raise utils.AudioError(f"{path}: not a readable .npy array file") from None
    if spec.ndim != 2 or spec.shape[0] != utils.N_FFT // 2 + 1:
        raise utils.AudioError(f"{path}: shape {spec.shape} is not a log spectrogram of "
                               f"{utils.N_FFT // 2 + 1} bins by frames")
    return spec


# ------------------------------------------------------------------------------ the whole row

def evaluate(content, style, generated_paths, encoder=None):
    """One dict per generated clip, keys COLUMNS (lsd_db None without a saved spectrogram,
    wer None when the recogniser hears no words in the content).

    Every file is read and checked before any measuring; pass `encoder` (load_encoder())
    to reuse one across calls.
    """
    return list(measure(content, style, generated_paths, encoder))


def measure(content, style, generated_paths, encoder=None):
    """evaluate()'s rows one at a time, as each clip is measured (every file is still
    read and checked before the first)."""
    content_16k = utils.load_audio(content, sr=ENCODER_RATE)
    content_stoi = utils.load_audio(content, sr=STOI_RATE)
    style_16k = utils.load_audio(style, sr=ENCODER_RATE)
    generated = [(path, utils.load_audio(path, sr=ENCODER_RATE),
                  utils.load_audio(path, sr=STOI_RATE), saved_spectrogram(path))
                 for path in generated_paths]
    encoder = encoder or load_encoder()
    content_embedding = speaker_embedding(content_16k, encoder)
    content_words = transcript(content_16k)
    style_embedding = speaker_embedding(style_16k, encoder)
    for path, y_16k, y_stoi, spec in generated:
        embedding = speaker_embedding(y_16k, encoder)
        sim_style = speaker_similarity(embedding, style_embedding)
        sim_content = speaker_similarity(embedding, content_embedding)
        lsd = None
        if spec is not None:
            # The spectrogram was optimised at train.py's rate; measure the wav at the same.
            written = utils.log_spectrogram(utils.load_audio(path))
            lsd = log_spectral_distance(spec, written)
        yield {"file": path, "sim_style": sim_style, "sim_content": sim_content,
               "margin": sim_style - sim_content,
               "stoi": stoi_score(y_stoi, content_stoi),
               "wer": word_error_rate(content_words, transcript(y_16k)),
               **dnsmos(y_16k), "lsd_db": lsd}


# ------------------------------------------------------------------------------ command line

def build_parser():
    intro, _, columns = __doc__.split("\n\n", 2)  # the columns' meanings close the help
    p = OneLineParser(prog="evaluate.py", description=intro, epilog=columns,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clips", nargs="+", metavar="CLIP",
                   help="CONTENT STYLE GENERATED [GENERATED ...]: the content clip the "
                        "transfer started from, the style clip, generated clip(s); or only "
                        "generated clips, each with the record train.py writes beside it "
                        "(<name>.json), which names its content and style")
    p.add_argument("-csv", help="also write the rows to this CSV file")
    return p


def table_line(cells, width):
    """The file name left-aligned in `width`, then the measures right-aligned under their
    names."""
    return " ".join([f"{cells[0]:<{width}}"] + [f"{c:>{max(7, len(name))}}"
                                               for c, name in zip(cells[1:], COLUMNS[1:])])


def cell(row, column, extra_decimals=0):
    """A measure as text, "" for None; the CSV asks for more decimals than the table."""
    value = row[column]
    return "" if value is None else f"{value:.{DECIMALS.get(column, 3) + extra_decimals}f}"


def table_cells(row):
    return [row["file"]] + [cell(row, k) or "-" for k in COLUMNS[1:]]


def write_csv(path, rows):
    utils.write_csv(path, COLUMNS, [[row["file"]] + [cell(row, k, 3) for k in COLUMNS[1:]]
                                    for row in rows])


def clip_groups(clips):
    """(content, style, [generated, ...]) to measure: the content and style from each
    clip's record when every clip has one beside it, else the first two clips given."""
    if all(os.path.isfile(report.record_path(c)) for c in clips):
        return report.clips_from_records(clips)
    if len(clips) < 3:
        raise utils.AudioError(f"{clips[-1]}: no record (<name>.json) beside it to name its "
                               f"content and style; give CONTENT STYLE GENERATED")
    return [(clips[0], clips[1], clips[2:])]


def run(args):
    if args.csv:  # find out before the measuring, not after
        folder = os.path.dirname(os.path.abspath(args.csv))
        if os.path.isdir(args.csv):
            raise utils.AudioError(f"-csv {args.csv}: is a folder, not a file")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise utils.AudioError(f"-csv {args.csv}: cannot write there (no such folder, "
                                   f"or not writable)")
        utils.check_writable_files([args.csv])
    groups = clip_groups(args.clips)
    encoder = load_encoder() if len(groups) > 1 else None  # one load for several pairs
    clips = [path for _, _, generated in groups for path in generated]
    width = max(len("file"), *(len(path) for path in clips))
    measured, interrupted = [], False
    try:
        # each row is printed as it is measured, so that Ctrl-C keeps those
        for content, style, generated in groups:
            for row in measure(content, style, generated, encoder):
                if not measured:
                    print(table_line(COLUMNS, width))
                measured.append((row, content, style))
                print(table_line(table_cells(row), width), flush=True)
    except KeyboardInterrupt:
        if not measured:
            raise
        interrupted = True
        print(f"evaluate.py: interrupted after {len(measured)} of {len(clips)} clips",
              file=sys.stderr)
    rows = [row for row, _, _ in measured]
    if args.csv:
        write_csv(args.csv, rows)
    # Last, so that a results folder that cannot be written still gets its table printed.
    updated = [report.add_measures(row["file"], row, content, style)
               for row, content, style in measured]
    for folder in sorted({os.path.dirname(path) for path in updated if path}):
        report.refresh_page(folder)  # a page beside the records shows the new measures
    return 130 if interrupted else 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    # utils.AudioError covers OutputError too: a -csv not written
    return guarded("evaluate.py", lambda: run(args), (utils.AudioError, MissingPackage))


if __name__ == "__main__":
    sys.exit(main())
