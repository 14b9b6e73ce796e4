"""Settings side by side on real pairs: whose voice, which words, how natural, how long.

    python compare.py                                   # the default against -preset voice
    python compare.py -pairs reference -seeds 0 -setting "w30=-style_weight 30"

Runs every setting on every pair with every seed, through train.py's VoiceTransfer in
this process, one run at a time, and judges each result with evaluate.py. Prints a row
per run as it comes, then per pair and setting the means over the seeds, then each
setting's mean over the dev-speech pairs, with its time against the default's. Writes
into -output (default output/compare/) each result's wav, pictures and record, every
row to compare.csv, and index.html, a page to listen to them all.

Pairs: "reference", the reference's two (boy18 -> girl52, boy -> girl, from
../shared/reference-audio), judged as evaluate.py does, against the two clips; and
"dev", eight of ../shared/dev-speech, each a 4.5-7 s sentence of one LibriSpeech reader
in the voice of a 3-4.5 s sentence of another, four across sex and four within. Their
margin is taken against the readers rather than the clips: the similarity to the mean
embedding of the style reader's other nine utterances, less the same for the content
reader's, so that it measures the voice and not one recording.
Ctrl-C stops after the run in progress (its result kept if it finished) and prints the
tables of what was measured; the exit status is then 130.
"""
import argparse
import os
import re
import shlex
import sys

import numpy as np

import evaluate
import report
import train
import utils
from cli import OneLineParser, UsageError, guarded, log, seed_number

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "shared")
REFERENCE_PAIRS = [("boy18", "girl52"), ("boy", "girl")]
# content -> style: readers 367, 533 and 1998 are women, 1688, 2033 and 2414 men
DEV_PAIRS = [("1688-142285-0004", "367-130732-0001"), ("367-130732-0004", "2033-164914-0004"),
             ("2414-128291-0007", "533-1066-0009"), ("1998-15444-0001", "1688-142285-0005"),
             ("533-1066-0003", "1998-15444-0007"), ("1998-15444-0006", "367-130732-0008"),
             ("2033-164914-0003", "2414-128291-0006"), ("1688-142285-0003", "2033-164914-0007")]
SETTINGS = ["default=", "voice=-preset voice"]
COLUMNS = ["pair", "setting", "seed", "seconds", "margin", "stoi", "wer", "dnsmos_ovrl",
           "sim_style", "sim_content", "file"]


def setting(text):
    """NAME=FLAGS, e.g. 'w30=-style_weight 30': a name for the table, train.py's flags."""
    name, sep, flags = text.partition("=")
    if not sep or not name or not name.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"give NAME=FLAGS, e.g. 'w30=-style_weight 30', "
                                         f"not {text!r}")
    return name, shlex.split(flags)


def build_parser():
    intro, _ = __doc__.split("\n\n", 1)
    p = OneLineParser(prog="compare.py", description=intro)
    p.add_argument("-setting", dest="settings", type=setting, action="append",
                   help=f"NAME=FLAGS, repeatable (default: {' and '.join(SETTINGS)}); the "
                        f"one named default is what the times are compared against")
    p.add_argument("-pairs", default="reference,dev",
                   help="reference, dev (dev:N: its first N pairs) or both, comma-separated "
                        "(default: both)")
    p.add_argument("-seeds", default="0,1,2", help="random-CNN seeds, comma-separated")
    p.add_argument("-reference_audio", default=os.path.join(SHARED, "reference-audio"))
    p.add_argument("-dev_speech", default=os.path.join(SHARED, "dev-speech"))
    p.add_argument("-output", default=os.path.join("output", "compare"))
    return p


def pairs(which, reference_audio, dev_speech):
    """[(name, content path, style path, group)] for the groups named in `which`."""
    chosen = []
    for group in which.replace("both", "reference,dev").split(","):
        if group == "reference":
            chosen += [(f"{c} -> {s}", os.path.join(reference_audio, c + ".wav"),
                        os.path.join(reference_audio, s + ".wav"), group)
                       for c, s in REFERENCE_PAIRS]
        elif re.fullmatch(r"dev(:[1-9][0-9]*)?", group):  # dev:N, the first N pairs only
            count = int(group[4:]) if ":" in group else len(DEV_PAIRS)
            path = lambda clip: os.path.join(dev_speech, clip.split("-")[0], clip + ".flac")
            chosen += [(f"{c} -> {s}", path(c), path(s), "dev")
                       for c, s in DEV_PAIRS[:count]]
        else:
            raise UsageError(f"-pairs: {group!r} is not a group; give reference, dev (or dev:N, "
                             f"its first N pairs) or both")
    for _, content, style, _ in chosen:
        for clip in (content, style):
            if not os.path.exists(clip):
                raise UsageError(f"{clip}: not found (see -reference_audio, -dev_speech)")
    return chosen


class ReaderMargin:
    """The margin against readers: each reader's voice is the mean d-vector of their
    utterances in the folder of `clip`, leaving out the clips of the pair."""

    def __init__(self, encoder):
        self.encoder, self.voices = encoder, {}

    def voice(self, clip, leave_out):
        folder = os.path.dirname(os.path.abspath(clip))
        key = (folder, leave_out)
        if key not in self.voices:
            others = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                      if f.endswith(".flac") and os.path.join(folder, f) not in leave_out]
            if not others:
                raise UsageError(f"{folder}: no other utterance of this reader to take the "
                                 f"margin against")
            embeddings = [evaluate.speaker_embedding(
                utils.load_audio(f, sr=evaluate.ENCODER_RATE), self.encoder) for f in others]
            mean = np.mean(embeddings, axis=0)
            self.voices[key] = mean / np.linalg.norm(mean)
        return self.voices[key]

    def __call__(self, wav, content, style):
        """(sim_style, sim_content) of the result `wav` against the two readers."""
        pair = (os.path.abspath(content), os.path.abspath(style))
        embedding = evaluate.speaker_embedding(
            utils.load_audio(wav, sr=evaluate.ENCODER_RATE), self.encoder)
        return (evaluate.speaker_similarity(embedding, self.voice(style, pair)),
                evaluate.speaker_similarity(embedding, self.voice(content, pair)))


def train_settings(name, flags, content="content", style="style", seed=0):
    """train.py's namespace for the setting `name`'s flags; a wrong flag is a UsageError."""
    parser = train.build_parser()
    parser.raising = True
    try:
        return parser.parse_args(["-content", content, "-style", style, *flags,
                                  "-seed", str(seed)])
    except UsageError as e:
        raise UsageError(f"{name}: {e}") from None


def run_one(setting_name, flags, seed, pair, folder, encoder, readers):
    """One transfer, saved and judged: its row."""
    name, content, style, group = pair
    settings = train_settings(setting_name, flags, content, style, seed)
    vt = train.VoiceTransfer.from_settings(settings)
    result = vt.transfer(content, style, progress=False)
    if result.why.startswith("interrupted"):
        raise KeyboardInterrupt
    stem = name.replace(" -> ", "_as_")
    row = {"pair": name, "group": group, "seed": seed, "seconds": result.seconds}
    row["file"] = result.save(os.path.join(folder, f"{stem}_{setting_name}_seed{seed}.wav"))[0]
    measured = evaluate.evaluate(content, style, [row["file"]], encoder=encoder)[0]
    if group == "dev":
        measured["sim_style"], measured["sim_content"] = readers(row["file"], content, style)
        measured["margin"] = measured["sim_style"] - measured["sim_content"]
    report.add_measures(row["file"], measured, content, style)
    return {**measured, **row}


def print_row(r):
    wer = "-" if r["wer"] is None else f"{r['wer']:.2f}"
    print(f"{r['pair']:40} {r['setting']:10} {r['seed']:4d} {r['seconds']:7.1f} "
          f"{r['margin']:+7.3f} {r['stoi']:6.3f} {wer:>5} {r['dnsmos_ovrl']:6.2f}", flush=True)


def mean(rows, key):
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else float("nan")


def summary_line(label, rows, default_seconds=None):
    times = ""
    if default_seconds:
        times = f" {mean(rows, 'seconds') / default_seconds:5.2f}x"
    return (f"{label:44} {len(rows):3d} {mean(rows, 'seconds'):7.1f}{times:>7} "
            f"{mean(rows, 'margin'):+7.3f} {mean(rows, 'stoi'):6.3f} {mean(rows, 'wer'):5.2f} "
            f"{mean(rows, 'dnsmos_ovrl'):6.2f}")


def print_summary(rows, names):
    print(f"\n{'pair / setting (means over seeds)':44} {'n':>3} {'seconds':>7} "
          f"{'x def':>7} {'margin':>7} {'stoi':>6} {'wer':>5} {'dnsmos':>6}")
    by = lambda **kw: [r for r in rows if all(r[k] == v for k, v in kw.items())]
    for pair in dict.fromkeys(r["pair"] for r in rows):
        default = mean(by(pair=pair, setting="default"), "seconds") if "default" in names else None
        for name in names:
            if by(pair=pair, setting=name):
                print(summary_line(f"{pair} {name}", by(pair=pair, setting=name), default))
    for group in dict.fromkeys(r["group"] for r in rows):
        for name in names:
            chosen = by(group=group, setting=name)
            if chosen:
                print(summary_line(f"mean over the {group} pairs: {name}", chosen))


def write_csv(path, rows):
    utils.write_csv(path, COLUMNS, [[r[k] if isinstance(r[k], (str, int)) or r[k] is None
                                     else f"{r[k]:.6g}" for k in COLUMNS] for r in rows])


def run(args):
    settings = args.settings or [setting(s) for s in SETTINGS]
    names = [name for name, _ in settings]
    try:
        seeds = [seed_number(s) for s in args.seeds.split(",")]
    except argparse.ArgumentTypeError:
        raise UsageError(f"-seeds: not a comma-separated list of seeds: {args.seeds}") from None
    for name, flags in settings:  # every setting is checked before any work
        train_settings(name, flags)
    chosen = pairs(args.pairs, args.reference_audio, args.dev_speech)
    encoder = evaluate.load_encoder()
    readers = ReaderMargin(encoder)
    table = os.path.join(args.output, "compare.csv")
    # the folder and the files made once at the end are checked before any work
    with utils.output_dir(args.output, [table, os.path.join(args.output, report.PAGE)]):
        print(f"{'pair':40} {'setting':10} {'seed':>4} {'seconds':>7} {'margin':>7} "
              f"{'stoi':>6} {'wer':>5} {'dnsmos':>6}", flush=True)
        rows, stopped = [], False
        try:
            for pair in chosen:
                for name, flags in settings:
                    for seed in seeds:
                        rows.append(dict(run_one(name, flags, seed, pair, args.output,
                                                 encoder, readers), setting=name))
                        print_row(rows[-1])
        except KeyboardInterrupt:
            stopped = True
            log(f"interrupted (Ctrl-C): keeping the {len(rows)} run(s) measured")
        if rows:
            print_summary(rows, names)
            write_csv(table, rows)
            print(report.write_page(args.output, [r["file"] for r in rows],
                                    title="settings compared"))
            print(table)
    return 130 if stopped else 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return guarded("compare.py", lambda: run(args), (utils.AudioError, evaluate.MissingPackage))


if __name__ == "__main__":
    sys.exit(main())
