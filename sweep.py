"""Sweep the style weight of one transfer and picture the trade-off it makes.

    python sweep.py -content a.wav -style b.wav -weights 1,10,100,1000 [-seeds 0,1,2]

Runs train.py's transfer once per style weight and seed (any other train.py option is
passed through, e.g. -kernel 3x3 or -phase content), measures each result with
evaluate.py, and writes into -output (default output/):
    sweep_<content>_<style>.png   speaker margin (sim_style - sim_content) against STOI,
                                  one point per weight and seed, with the target lines
    sweep_<content>_<style>.csv   the same figures, one row per weight and seed
    sweep_<content>_<style>/      each weight's wav and pictures, as train.py writes them,
                                  its record (.json) with the measures, and index.html:
                                  a page to listen to every result, this picture on top
A larger style weight moves the voice toward the style speaker and costs words; the
picture shows where a pair of clips lands so the weight can be picked by eye. The
random CNN's seed moves a result by a few hundredths of margin and STOI; -seeds runs each
weight with several, and the picture joins their means.
Defaults use L-BFGS for 300 loss evaluations, which reaches a lower loss than the
reference's 20000 Adam steps and takes seconds to a minute per weight on a CPU.
Ctrl-C stops the sweep and still writes the points measured so far; one whose
optimisation it cut short is marked (interrupted: yes, a hollow point, left out of the
means), and the exit status is 130.
"""
import argparse
import os
import sys
import time

import evaluate
import report
import train
import utils
from cli import guarded

TARGET_MARGIN, TARGET_STOI = 0.15, 0.80  # issue 5's target: this margin or more at this STOI
COLUMNS = ["style_weight", "seed", "margin", "stoi", "wer", "dnsmos_ovrl", "dnsmos_sig",
           "dnsmos_bak", "sim_style", "sim_content", "lsd_db", "content_loss", "style_loss",
           "seconds", "file", "interrupted"]


def _comma_separated(text, kind, noun):
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of {noun}: {text!r}")
    if not values:
        raise argparse.ArgumentTypeError(f"need one or more {noun}, got {text!r}")
    return values


def weight_list(text):
    weights = _comma_separated(text, float, "numbers")
    if any(not w >= 0 or w == float("inf") for w in weights):
        raise argparse.ArgumentTypeError(f"need one or more finite weights >= 0, got {text!r}")
    return sorted(set(weights))


def seed_list(text):
    seeds = _comma_separated(text, int, "integers")
    for seed in seeds:  # each within what train.py's -seed takes, with its message
        train.seed_number(str(seed))
    return list(dict.fromkeys(seeds))  # as given, once each


def build_parser():
    """train.py's options (one content clip; -style_weight is what -weights replaces)."""
    p = train.build_parser()
    p.prog = "sweep.py"
    p.description = __doc__.split("\n\n")[0]
    for action in p._actions:
        if action.dest == "content":
            action.help = "content clip (one)"
        elif action.dest == "style_weight":
            action.help = "not used here: give -weights"
    p.add_argument("-weights", type=weight_list, default=weight_list("1,10,30,100"),
                   help="comma-separated style weights to try")
    p.add_argument("-seeds", type=seed_list, default=None,
                   help="comma-separated seeds to run each weight with (default: -seed)")
    p.set_defaults(optimizer="lbfgs", epochs=300, style_weight=None)
    p.set_by_caller = ("style_weight",)  # a -preset's style weight: -weights replaces it
    return p


def weight_text(w):
    return f"{w:g}"


def setting_text(args, parser):
    """The options that differ from sweep.py's defaults, for the picture's title."""
    skip = {"content", "style", "output", "weights", "seeds", "seed", "style_weight",
            "print_interval", "plot_interval", "device", "save_spectrogram", "style_form",
            "optimizer", "epochs"}
    parts = [f"-{k} {v}" if v is not True else f"-{k}" for k, v in sorted(vars(args).items())
             if k not in skip and v != parser.get_default(k)]
    steps = "iterations" if args.optimizer == "adam" else "evaluations"
    seeds = args.seeds or [args.seed]
    seeds = f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
    return (f"{args.optimizer}, {args.epochs} {steps}, {seeds}; "
            + (" ".join(parts) or "other options as train.py's defaults"))


def plot(rows, path, title):
    plt = utils._pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), constrained_layout=True)
    weights = sorted({r["style_weight"] for r in rows})
    colours = plt.get_cmap("viridis")([i / max(1, len(weights) - 1) for i in range(len(weights))])
    means = []
    for w, colour in zip(weights, colours):
        cut = [r for r in rows if r["style_weight"] == w and r["interrupted"]]
        mine = [r for r in rows if r["style_weight"] == w and not r["interrupted"]]
        if cut:  # an optimisation Ctrl-C cut short: shown, hollow, and kept out of the mean
            ax.scatter([r["stoi"] for r in cut], [r["margin"] for r in cut], s=40, zorder=2,
                       facecolors="none", edgecolors=colour, label="interrupted (Ctrl-C)")
            if not mine:
                ax.annotate(f"w={weight_text(w)} (interrupted)", (cut[0]["stoi"],
                            cut[0]["margin"]), textcoords="offset points", xytext=(5, 5),
                            fontsize=8)
                continue
        x, y = [r["stoi"] for r in mine], [r["margin"] for r in mine]
        ax.scatter(x, y, color=colour, s=40 if len(mine) == 1 else 18, zorder=2)
        means.append((sum(x) / len(x), sum(y) / len(y)))
        label = f"w={weight_text(w)}" + (f" (mean of {len(mine)})" if len(mine) > 1 else "")
        if len(mine) > 1:
            ax.scatter(*means[-1], color=colour, marker="D", s=50, edgecolor="k", zorder=3)
        ax.annotate(label, means[-1], textcoords="offset points", xytext=(5, 5), fontsize=8)
    if means:
        ax.plot(*zip(*means), "-", color="0.7", zorder=1)
    ax.axhline(TARGET_MARGIN, color="tab:red", ls="--", lw=1,
               label=f"target: margin >= {TARGET_MARGIN:+.2f}")
    ax.axvline(TARGET_STOI, color="tab:blue", ls="--", lw=1,
               label=f"target: STOI >= {TARGET_STOI:.2f}")
    ax.axhline(0, color="0.5", lw=0.6)
    left, right = ax.get_xlim()
    bottom, top = ax.get_ylim()
    ax.set_xlim(min(left, TARGET_STOI - 0.02), max(right, TARGET_STOI + 0.02))
    ax.set_ylim(min(bottom, -0.05), max(top, TARGET_MARGIN + 0.05))
    ax.fill_between([TARGET_STOI, ax.get_xlim()[1]], TARGET_MARGIN, ax.get_ylim()[1],
                    color="tab:green", alpha=0.08, lw=0)
    ax.set_xlabel("STOI against the content (words kept; 1 = all)")
    ax.set_ylabel("speaker margin: sim(style) - sim(content)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    utils.save_figure(fig, path)


def write_csv(path, rows):
    utils.write_csv(path, COLUMNS, [
        [weight_text(r["style_weight"]), r["seed"]]
        + [("" if r[k] is None else f"{r[k]:.6g}") for k in COLUMNS[2:-2]]
        + [r["file"], "yes" if r["interrupted"] else "no"] for r in rows])


def point_name(c_name, s_name, weight, seed, several_seeds):
    name = f"{c_name}_as_{s_name}_w{weight_text(weight)}"
    return name + f"_seed{seed}" if several_seeds else name


def sweep_point(vt, content, style, content_audio, style_audio, encoder, stem, name):
    """One transfer at the style weight and seed vt.settings holds, written and measured:
    its row. content, style: the clips' paths; content_audio, style_audio: their samples as
    vt.load gave them, loaded once for the whole sweep."""
    result = vt.results([content], [content_audio], style, style_audio, time.perf_counter(),
                        progress=False)[0]
    wav = result.save(os.path.join(stem, name + ".wav"))[0]
    measured = evaluate.evaluate(content, style, [wav], encoder=encoder)[0]
    report.add_measures(wav, measured, content, style)
    history = result.history[0][1] if result.history else []
    content_loss, style_loss = history[-1][1:] if history else (None, None)
    return dict(measured, style_weight=vt.settings.style_weight, seed=vt.settings.seed,
                seconds=result.seconds, content_loss=content_loss, style_loss=style_loss,
                interrupted=result.why.startswith("interrupted"))


def run(args, parser):
    if args.style_weight is not None:
        raise train.UsageError("sweep.py sweeps the style weight: give -weights, "
                               "not -style_weight")
    if len(args.content) != 1:
        raise train.UsageError(f"-content: give one clip, not {len(args.content)}")
    args.content = args.content[0]
    seeds = args.seeds or [args.seed]
    train.check_seeds(seeds, args.ensemble)
    vt = train.VoiceTransfer.from_settings(args)
    content = vt.load(args.content)  # both checked before any work
    style = vt.load(args.style)
    train.check_memory(args, [content], style)
    encoder = evaluate.load_encoder()  # fails here, before any work, if it is not installed
    c_name = os.path.splitext(os.path.basename(args.content))[0]
    s_name = os.path.splitext(os.path.basename(args.style))[0]
    stem = os.path.join(args.output, f"sweep_{c_name}_{s_name}")
    points = [(w, seed, point_name(c_name, s_name, w, seed, len(seeds) > 1))
              for w in args.weights for seed in seeds]
    planned = [p for _, _, name in points for p in train.planned_outputs(stem, name, args)]
    # the page, and its copy of the sweep's picture
    planned += [os.path.join(stem, name) for name in (report.PAGE, os.path.basename(stem) + ".png")]

    rows, stopped = [], False
    # every file the sweep will write is checked now, not after the work
    with utils.output_dir(args.output, [stem + ".csv", stem + ".png"]), \
            utils.output_dir(stem, planned), train.memory_reported([content], style, vt.device):
        print(f"{'weight':>8} {'seed':>5} {'margin':>7} {'stoi':>6} {'sim_style':>9} "
              f"{'sim_content':>11} {'seconds':>7}", flush=True)
        try:
            for w, seed, name in points:
                args.style_weight, args.seed = w, seed
                rows.append(sweep_point(vt, args.content, args.style, content, style,
                                        encoder, stem, name))
                r = rows[-1]
                print(f"{weight_text(w):>8} {seed:>5} {r['margin']:+7.3f} {r['stoi']:6.3f} "
                      f"{r['sim_style']:9.3f} {r['sim_content']:11.3f} {r['seconds']:7.1f}"
                      + ("  interrupted" if r["interrupted"] else ""), flush=True)
                if r["interrupted"]:
                    break
        except KeyboardInterrupt:  # outside an optimisation (writing or measuring a point)
            stopped = True
            train.log(f"interrupted (Ctrl-C): keeping the {len(rows)} point(s) measured")
        args.style_weight = None
        if rows:
            write_csv(stem + ".csv", rows)
            plot(rows, stem + ".png", f"{c_name} -> {s_name}: style-weight sweep\n"
                                      f"{setting_text(args, parser)}")
            print(report.write_page(stem, [r["file"] for r in rows], pictures=[stem + ".png"],
                                    title=f"{c_name} -> {s_name}: style-weight sweep"))
            print(stem + ".csv")
            print(stem + ".png")
    return 130 if stopped or (rows and rows[-1]["interrupted"]) else 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return guarded("sweep.py", lambda: run(args, parser),
                   (utils.AudioError, evaluate.MissingPackage))


if __name__ == "__main__":
    sys.exit(main())
