"""The record of each run and the listening page, shared by train.py, sweep.py and evaluate.py.

Record: beside every result `<name>.wav`, `<name>.json` says what produced it (command line,
every setting with its defaults resolved, seeds, package versions and device, iterations
and why they stopped, final losses, wall time) and, once measured, its measures.

Page: `index.html` beside a set of results: one table row per result with audio players
for the content, the style and the result, the spectrogram picture, the settings that
differ between rows and the measures. Plain HTML with relative links only; the content and
style clips are copied into `sources/`, so the folder can be zipped and opened anywhere.
"""
import datetime
import functools
import html
import html.parser
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import urllib.parse

import librosa
import numpy as np
import soundfile as sf
import torch

import utils

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD_VERSION = 1
PAGE = "index.html"
SOURCES = "sources"  # the page's copies of the content and style clips
MEASURES = ["margin", "stoi", "wer", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "sim_style",
            "sim_content", "lsd_db"]  # evaluate.py's
# Settings a rerun cannot take from the record as flags: sweep.py's own lists.
NOT_TRAIN_FLAGS = ("weights", "seeds")
# Shown by each row's players already, or only about where files went / how much is printed.
NOT_SHOWN = {"content", "style", "output", "print_interval", "plot_interval"}


# ------------------------------------------------------------------------------ the record

def record_path(wav_path):
    """`<name>.json` for `<name>.wav`."""
    return os.path.splitext(wav_path)[0] + ".json"


def environment(device):
    """Versions of what computed the result, and the device it ran on: a dict of strings."""
    device = torch.device(device)
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "librosa": librosa.__version__,
           "soundfile": sf.__version__, "platform": platform.platform(),
           "device": str(device)}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    env.update(code_version())
    return env


@functools.lru_cache(maxsize=None)  # one look per process, not two git calls per result
def code_version():
    """{'commit': HEAD, 'modified': uncommitted changes?} of this tool's git checkout, or {}
    when it is not one (an unpacked archive) or git is missing."""
    try:
        def git(*args):
            return subprocess.run(["git", "-C", HERE, *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        modified = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "modified": modified}


def flag_command(settings, script="train.py"):
    """The command line that reruns `settings` (a dict of train.py's option names to
    values, as vars(args)): every setting spelled out, so a changed default cannot change
    the rerun. True -> the bare flag, False and None -> left out, a list -> its items."""
    words = ["python", script]
    for key, value in settings.items():
        if key in NOT_TRAIN_FLAGS or value is None or value is False:
            continue
        words.append(f"-{key}")
        if isinstance(value, (list, tuple)):
            words += [str(v) for v in value]
        elif value is not True:
            words.append(str(value))
    return shlex.join(words)


def final_losses(runs, index):
    """One dict per random CNN that ran: its seed, iterations done and the weighted content
    and style losses of clip `index` at its last recorded step.

    runs: list of (seed, curves) as train.optimise_ensemble returns them; curves[index] the clip's
    loss curve, [(step, content, style)], whose last entry is its last step (for a clip
    optimised in segments: the longest-running segment's, the losses weighted over them).
    """
    out = []
    for seed, curves in runs:
        last = curves[index][-1] if curves[index] else None
        out.append({"seed": int(seed), "iterations": int(last[0]) if last else 0,
                    "content_loss": float(last[1]) if last else None,
                    "style_loss": float(last[2]) if last else None})
    return out


def run_record(args, content, runs, index, why, device, seconds, measures=None):
    """The record of one result, a JSON-able dict.

    args: the argparse namespace after train.settle_defaults (every default resolved);
    content: the path of this result's content clip; runs, index: as final_losses;
    why: how the (last) optimisation stopped; device: where it ran; seconds: wall time
    from the start of the run until this result was written; measures: a dict with
    evaluate.py's MEASURES, or None when none were computed. "iterations" is the total
    over the random CNNs' runs (-ensemble); "runs" has each one's.
    """
    settings = dict(vars(args))
    per_run = final_losses(runs, index)
    record = {
        "record_version": RECORD_VERSION,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "rerun": flag_command(settings),
        "content": os.path.abspath(content) if content else None,  # None: an array
        "style": os.path.abspath(args.style) if args.style else None,
        "settings": settings,
        "seeds": [r["seed"] for r in per_run],
        "environment": environment(device),
        "iterations": sum(r["iterations"] for r in per_run),
        "stopped": why,
        "runs": per_run,
        "seconds": round(float(seconds), 3),
    }
    if measures is not None:
        record["measures"] = pick_measures(measures)
    return record


def pick_measures(measures):
    """evaluate.py's measures from a row (a dict with at least MEASURES), as plain floats
    (None where one was not computed)."""
    return {k: (None if measures.get(k) is None else float(measures[k])) for k in MEASURES}


def write_text(path, text):
    """Write `text` to `path` atomically; a folder that refuses it is utils.atomic_write's
    one line naming the file (evaluate.py may be adding measures to results in someone
    else's folder)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    utils.atomic_write(path, write)
    return path


def write_record(wav_path, record):
    """Write `record` as `<name>.json` beside `wav_path`, atomically; returns its path."""
    # default=str: numpy scalars and anything else a setting may hold, as text
    return write_text(record_path(wav_path), json.dumps(record, indent=2, default=str) + "\n")


def read_record(wav_path):
    """The record beside `wav_path`, or None when there is none; a record that is not one
    is an AudioError naming it."""
    path = record_path(wav_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise utils.AudioError(f"{path}: not a readable run record ({e})") from None
    if not isinstance(record, dict) or not {"content", "style", "settings"} <= set(record):
        raise utils.AudioError(f"{path}: not a run record (no content, style and settings)")
    return record


def add_measures(wav_path, measures, content, style):
    """Put `measures` (evaluate.py's row) into the record beside `wav_path`, if there is one
    and it names the same content and style clips the measures were taken against (against
    other clips they would describe something else). Returns the record's path, or None."""
    record = read_record(wav_path)
    if record is None or not (_same_file(record["content"], content)
                              and _same_file(record["style"], style)):
        return None
    record["measures"] = pick_measures(measures)
    return write_record(wav_path, record)


def _same_file(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def clips_from_records(wav_paths):
    """Group generated clips by the content and style clips their records name:
    a list of (content, style, [wav, ...]) in the order first seen. A clip without a
    record is an AudioError naming it."""
    groups = {}
    for wav in wav_paths:
        record = read_record(wav)
        if record is None:
            raise utils.AudioError(f"{wav}: no run record {record_path(wav)} beside it to name "
                                   f"its content and style clips")
        groups.setdefault((record["content"], record["style"]), []).append(wav)
    return [(content, style, wavs) for (content, style), wavs in groups.items()]


# ------------------------------------------------------------------------------ the page

def copy_sources(folder, paths):
    """Copy each clip in `paths` (once, however often it is named) into folder/sources/
    so the page can link to it relatively. A .wav is copied byte for byte; another format
    (flac, ogg, ...) is written as a wav of what train.py heard (mono, 22050 Hz), which
    every browser plays. Returns {realpath: link relative to folder}."""
    try:
        os.makedirs(os.path.join(folder, SOURCES), exist_ok=True)
        return _copy_sources(folder, paths)
    except OSError as e:
        raise utils.AudioError(f"{os.path.join(folder, SOURCES)}: cannot copy the clips "
                               f"there ({e.strerror or e})") from None


def _copy_sources(folder, paths):
    links, taken, done = {}, set(), set()
    for path in paths:
        key = os.path.realpath(path)
        if key in done:
            continue
        done.add(key)
        stem = os.path.splitext(os.path.basename(path))[0]
        name, n = f"{stem}.wav", 1
        while name in taken:  # two clips of one name from different folders
            n += 1
            name = f"{stem}_{n}.wav"
        taken.add(name)
        target = os.path.join(folder, SOURCES, name)
        if not os.path.isfile(path):  # moved since the run: keep the copy made then, if any
            if os.path.isfile(target):
                links[key] = f"{SOURCES}/{name}"
            continue
        if key == os.path.realpath(target):  # a clip from this very page's sources/
            pass
        elif os.path.splitext(path)[1].lower() == ".wav":
            utils.atomic_write(target, lambda tmp: shutil.copyfile(path, tmp))
        else:
            utils.save_wav(target, utils.load_audio(path))
        links[key] = f"{SOURCES}/{name}"
    return links


def differing_settings(records):
    """The setting names whose values are not the same in every record (sorted), and the
    dict of those that are, leaving out NOT_SHOWN."""
    keys = sorted({k for r in records for k in r.get("settings", {})} - NOT_SHOWN)
    differ = [k for k in keys  # compared as JSON text: lists and None compare as written
              if len({json.dumps(r.get("settings", {}).get(k, "<absent>"), default=str)
                      for r in records}) > 1]
    shared = {k: records[0]["settings"].get(k) for k in keys if k not in differ}
    return differ, shared


def _setting_text(key, value):
    if value is True:
        return f"-{key}"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"-{key} {value}"


def _link(path):
    """A relative path made safe for an href/src (spaces, '#', '?' in file names)."""
    return urllib.parse.quote(path.replace(os.sep, "/"))


def _measures_text(measures):
    if not measures:
        return "not measured (evaluate.py adds them)"
    parts = []
    for key in MEASURES:
        value = measures.get(key)
        if value is None:
            continue
        parts.append(f"{key} {value:+.3f}" if key == "margin" else f"{key} {value:.3f}")
    return ", ".join(parts)


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td, th { border-top: 1px solid #ccc; padding: 0.5em; vertical-align: top; text-align: left; }
td.players div { margin-bottom: 0.4em; }
td.players span { display: inline-block; width: 5em; }
audio { vertical-align: middle; height: 2.2em; }
img.spectrograms { max-width: 720px; }
img.overview { max-width: 640px; }
.small { font-size: 85%; color: #555; }
code { white-space: pre-wrap; word-break: break-all; }
"""


def page_html(title, rows, shared, pictures):
    """The page's text. rows: one dict per result with 'name', 'result', 'content',
    'style' (links), 'spectrograms', 'loss' (links or None), 'settings' (list of text),
    'measures' (text), 'losses' (text), 'rerun' (text or None). shared: the settings
    every row has, as text; pictures: links to pictures shown above the table."""
    e = html.escape
    commands = {row.get("rerun") for row in rows}
    one_command = commands.pop() if len(commands) == 1 else None  # a batch: one command
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           f"<h1>{e(title)}</h1>",
           f"<p>{len(rows)} result{'s' if len(rows) != 1 else ''}: each row plays the content "
           "clip, the style clip and the result; the picture shows the three spectrograms "
           "(time in s, frequency in Hz, low at the bottom). Each result's record "
           "(<code>&lt;name&gt;.json</code>) holds everything that produced it.</p>"]
    for picture in pictures:
        out.append(f'<p><a href="{_link(picture)}"><img class="overview" '
                   f'src="{_link(picture)}" alt="{e(picture)}"></a></p>')
    if shared:
        out.append("<details><summary>settings shared by every row</summary><p><code>"
                   + e(" ".join(shared)) + "</code></p></details>")
    if one_command:
        out.append("<details><summary>the command that made every row</summary><p><code>"
                   + e(one_command) + "</code></p></details>")
    out += ["<table>", "<thead><tr><th>result</th><th>listen</th><th>spectrograms</th></tr>"
            "</thead>", "<tbody>"]
    for row in rows:
        players = []
        for label in ("content", "style", "result"):
            if row.get(label):
                players.append(f'<div><span>{label}</span><audio controls preload="metadata" '
                               f'src="{_link(row[label])}"></audio></div>')
        picture = ""
        if row.get("spectrograms"):
            picture = (f'<a href="{_link(row["spectrograms"])}"><img class="spectrograms" '
                       f'src="{_link(row["spectrograms"])}" alt="spectrograms of {e(row["name"])}">'
                       "</a>")
        details = [f"<b>{e(row['name'])}</b>"]
        if row["settings"]:
            details.append("<code>" + e(" ".join(row["settings"])) + "</code>")
        details.append(e(row["measures"]))
        details.append(f'<span class="small">{e(row["losses"])}</span>')
        if row.get("loss"):
            details.append(f'<a class="small" href="{_link(row["loss"])}">loss curves</a>')
        if row.get("rerun") and not one_command:
            details.append(f'<details class="small"><summary>command</summary>'
                           f'<code>{e(row["rerun"])}</code></details>')
        out.append(f'<tr class="result" data-wav="{e(row["result"])}">'
                   f"<td>{'<br>'.join(details)}</td>"
                   f'<td class="players">{"".join(players)}</td><td>{picture}</td></tr>')
    out += ["</tbody>", "</table>", "</body>", "</html>", ""]
    return "\n".join(out)


def _losses_text(record):
    runs = record.get("runs") or []
    done = [r for r in runs if r.get("content_loss") is not None]
    if not done:
        return f"stopped: {record.get('stopped', '?')}"
    content = np.mean([r["content_loss"] for r in done])
    style = np.mean([r["style_loss"] for r in done])
    each = " (mean of the random CNNs' runs)" if len(done) > 1 else ""
    return (f"final losses{each}: content {content:.4g}, style {style:.4g}; "
            f"{record.get('iterations', '?')} iterations; {record.get('stopped', '')}")


def write_page(folder, wav_paths, title=None, pictures=()):
    """Write folder/index.html for the results `wav_paths` (each in `folder`, with its
    record beside it where train.py or sweep.py wrote one), copying their content and
    style clips into folder/sources/. pictures: extra pictures to show above the table,
    copied into `folder` when they lie outside it. Returns the page's path."""
    folder = os.path.abspath(folder)
    records = [read_record(w) or {} for w in wav_paths]
    sources = copy_sources(folder, [p for r in records for p in (r.get("content"),
                                                                   r.get("style")) if p])
    differ, shared = differing_settings([r for r in records if r])
    rows = []
    for wav, record in zip(wav_paths, records):
        base = os.path.splitext(os.path.basename(wav))[0]
        here = lambda suffix: (base + suffix
                               if os.path.exists(os.path.join(folder, base + suffix)) else None)
        settings = record.get("settings", {})
        rows.append({"name": base, "result": os.path.basename(wav),
                     "content": sources.get(os.path.realpath(record.get("content", ""))),
                     "style": sources.get(os.path.realpath(record.get("style", ""))),
                     "spectrograms": here("_spectrograms.png"), "loss": here("_loss.png"),
                     "settings": [_setting_text(k, settings.get(k)) for k in differ],
                     "measures": _measures_text(record.get("measures")),
                     "losses": _losses_text(record) if record else "no record beside it",
                     "rerun": record.get("rerun")})
    links = []
    for picture in pictures:
        if os.path.dirname(os.path.abspath(picture)) != folder:
            target = os.path.join(folder, os.path.basename(picture))
            utils.atomic_write(target, lambda tmp: shutil.copyfile(picture, tmp))
        links.append(os.path.basename(picture))
    if title is None:
        styles = sorted({os.path.splitext(os.path.basename(r["style"]))[0]
                         for r in records if r.get("style")})
        title = (f"{len(rows)} voice transfer{'s' if len(rows) != 1 else ''}"
                 + (f" to {', '.join(styles)}" if styles else ""))
    text = page_html(title, rows, [_setting_text(k, v) for k, v in shared.items()
                                   if v is not None and v is not False], links)
    return write_text(os.path.join(folder, PAGE), text)


class _PageReader(html.parser.HTMLParser):
    """Reads back what write_page put on a page: its title, its results, its pictures."""

    def __init__(self):
        super().__init__()
        self.title, self.results, self.pictures, self._in_h1 = "", [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "result" in (attrs.get("class") or "").split():
            self.results.append(attrs.get("data-wav"))
        elif tag == "img" and attrs.get("class") == "overview":
            self.pictures.append(urllib.parse.unquote(attrs.get("src", "")))
        self._in_h1 = tag == "h1"

    def handle_data(self, data):
        if self._in_h1:
            self.title += data

    def handle_endtag(self, tag):
        self._in_h1 = False


def refresh_page(folder):
    """Rewrite folder/index.html (if there is one) from the current records of the results
    it shows, e.g. after evaluate.py has added measures. Returns its path, or None."""
    path = os.path.join(folder, PAGE)
    if not os.path.isfile(path):
        return None
    reader = _PageReader()
    with open(path, encoding="utf-8") as f:
        reader.feed(f.read())
    wavs = [os.path.join(folder, name) for name in reader.results
            if name and os.path.isfile(os.path.join(folder, name))]
    if not wavs:
        return None
    return write_page(folder, wavs, reader.title or None,
                      [os.path.join(folder, p) for p in reader.pictures
                       if os.path.isfile(os.path.join(folder, p))])
