"""Speed, memory and time-to-quality of the transfer, measured side by side in one process.

    python bench.py                                  # the input/ pair, CPU (and CUDA if present)
    python bench.py -content a.wav -style b.wav -device cpu -whole_run 2000
    python bench.py -batch 16 -device cuda           # one batch of 16 against 16 runs
    python bench.py -long 180 -long_iters 3          # 3-minute clips: memory of the Gram form
    python bench.py -convergence                     # loss against time, per optimiser and init

"reference" is the reference's formulation: the full 8160 x 8160 Grams (the style's
recomputed every step, as it did), autograd, one Python-driven Adam step at a time.
"ours" is train.py's: the cheaper exact style form, the fused gradient, and on CUDA the
whole iteration replayed as one CUDA graph. Both start from the same seed, weights and
initial spectrogram, so their losses after the same iterations must agree: the table
prints both, so the speed-up can be checked to be for the same objective.
"""
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import train
import utils
from cli import OneLineParser, UsageError, guarded
from model import content_loss, style_loss_textbook

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------------ memory

def reset_peak_rss():
    """Linux lets a process reset its peak resident size (VmHWM); elsewhere the peak
    stays the process's whole-life maximum."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    if torch.cuda.is_initialized():  # never start CUDA for this: its context would count
        torch.cuda.reset_peak_memory_stats()


def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_cuda_mb(device):
    return torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else 0.0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ the two formulations

def reference_iterations(content_spec, style_spec, iterations, device, seed=0):
    """The reference's loop: textbook Grams, autograd, Adam at 0.001, eager.
    Returns (ms per iteration, final content loss, final style loss)."""
    t = train.Transfer([content_spec], style_spec, device=device, seed=seed)
    style = torch.as_tensor(style_spec, device=device)[None]
    optimizer = torch.optim.Adam([t.spec], lr=1e-3)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        optimizer.zero_grad()
        features = t.net(t.spec)
        c = 100 * content_loss(features, t.content_features)
        s = style_loss_textbook(features, t.net(style))
        (c + s).sum().backward()
        optimizer.step()
        sync(device)
        times.append(time.perf_counter() - start)
    # the first iteration pays for allocation; a 20000-iteration run does not notice it
    steady = times[1:] or times
    return 1000 * float(np.median(steady)), c.item(), s.item()


def our_iterations(content_specs, style_spec, iterations, device, seed=0, **options):
    """train.py's transfer for `iterations` iterations. Returns (ms per iteration after
    the first, final content loss, final style loss), losses summed over the batch."""
    t = train.Transfer(content_specs, style_spec, device=device, seed=seed, **options)
    marks = {}

    def observe(i, content, style):
        if i in (1, iterations):
            sync(device)
            marks[i] = time.perf_counter()
        if i == iterations:
            marks["losses"] = (content.sum().item(), style.sum().item())
    t.run(iterations, observe)
    per = (marks[iterations] - marks[1]) / max(iterations - 1, 1)
    return 1000 * per, *marks["losses"]


# ------------------------------------------------------------------------------ sections

def speed(content_spec, style_spec, device, iterations, reference_iters):
    reset_peak_rss()
    ref_ms, ref_c, ref_s = reference_iterations(content_spec, style_spec, reference_iters, device)
    ref_rss, ref_cuda = peak_rss_mb(), peak_cuda_mb(device)
    reset_peak_rss()
    # the same number of iterations as the reference, to compare the losses reached
    _, our_c, our_s = our_iterations([content_spec], style_spec, reference_iters, device)
    our_ms, _, _ = our_iterations([content_spec], style_spec, iterations, device)
    our_rss, our_cuda = peak_rss_mb(), peak_cuda_mb(device)
    print(f"\n[{device}] per iteration, median of steady state")
    print(f"{'':10} {'ms/it':>10} {'peak RSS MB':>12} {'peak CUDA MB':>13}   "
          f"losses after {reference_iters} iterations (content, style)")
    print(f"{'reference':10} {ref_ms:10.2f} {ref_rss:12.0f} {ref_cuda:13.0f}   "
          f"{ref_c:.6f}  {ref_s:.6f}")
    print(f"{'ours':10} {our_ms:10.2f} {our_rss:12.0f} {our_cuda:13.0f}   "
          f"{our_c:.6f}  {our_s:.6f}")
    rel = abs(our_c + our_s - ref_c - ref_s) / (ref_c + ref_s)
    print(f"speed-up {ref_ms / our_ms:.1f}x; total losses differ by {rel:.1e} relative")
    print(f"20000 iterations: reference {ref_ms * 20:.0f} s, ours {our_ms * 20:.1f} s")


def whole_run(content, style, device, epochs, extra=()):
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, os.path.join(HERE, "train.py"),
                                 "-content", content, "-style", style, "-epochs", str(epochs),
                                 "-device", device.type, "-output", out, *extra],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"bench.py: train.py failed: {result.stderr.strip().splitlines()[-1]}")
    steps = [l for l in result.stderr.splitlines() if " iterations in " in l]
    print(f"\n[{device}] whole train.py run, {epochs} epochs {' '.join(extra)}: "
          f"{seconds:.1f} s end to end ({steps[-1] if steps else ''})")


def batch(content_spec, style_spec, device, size, iterations):
    single, _, _ = our_iterations([content_spec], style_spec, iterations, device)
    reset_peak_rss()
    together, _, _ = our_iterations([content_spec] * size, style_spec, iterations, device)
    print(f"\n[{device}] batch of {size}: {together:.2f} ms/it for all, against {size} x "
          f"{single:.2f} ms/it one by one: {size * single / together:.1f}x the throughput "
          f"(peak RSS {peak_rss_mb():.0f} MB, CUDA {peak_cuda_mb(device):.0f} MB)")


def long_clips(content_spec, style_spec, seconds, iterations, device):
    """Loop both clips to `seconds` and time a few iterations: the 8160 x 8160 form."""
    frames = int(seconds * utils.SAMPLE_RATE / utils.HOP)
    tile = lambda s: np.tile(s, (1, frames // s.shape[1] + 1))[:, :frames]
    reset_peak_rss()
    start = time.perf_counter()
    t = train.Transfer([tile(content_spec)], tile(style_spec), device=device)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    t.run(iterations, lambda *a: None)
    sync(device)
    per = (time.perf_counter() - start) / iterations
    print(f"\n[{device}] {seconds:.0f} s clips ({frames} frames), style form "
          f"{t.style_loss.form}: set-up {setup:.1f} s, {per:.1f} s per iteration, "
          f"peak RSS {peak_rss_mb():.0f} MB, peak CUDA {peak_cuda_mb(device):.0f} MB "
          f"(peak memory is reached in the first iteration and does not grow)")


CONVERGENCE_SETTINGS = [  # (label, Transfer options, iterations)
    ("adam lr 0.001, noise init (reference)", dict(), 20000),
    ("adam lr 0.001, content init", dict(init="content"), 20000),
    ("adam lr 0.01, noise init", dict(learning_rate=0.01), 20000),
    ("lbfgs, noise init", dict(optimizer="lbfgs"), 1000),
    ("lbfgs, content init", dict(optimizer="lbfgs", init="content"), 1000),
]


def convergence(content_spec, style_spec, device, target, budget, path):
    """Loss against wall time for each optimiser and init, from the same seed and CNN."""
    curves = {}
    for label, options, iterations in CONVERGENCE_SETTINGS:
        t = train.Transfer([content_spec], style_spec, device=device, **options)
        points, start = [], time.perf_counter()
        limit = budget if target is not None or curves else None
        every = 50 if device.type == "cuda" else 1  # reading a loss makes the GPU wait

        def observe(i, content, style):
            if i % every and i != iterations:
                return
            points.append((time.perf_counter() - start, i, (content + style).sum().item()))
            if limit is not None and points[-1][0] > limit:
                raise train.Converged("time budget spent")
        try:
            t.run(iterations, observe)
        except train.Converged:
            pass
        curves[label] = points
        if target is None:  # the first setting is the reference: its final loss is the bar
            target, budget = points[-1][2], points[-1][0]
            print(f"\n[{device}] reference: {len(points)} iterations, final loss "
                  f"{target:.4f} in {budget:.1f} s")
    print(f"\n[{device}] time to reach the reference's final loss {target:.4f}")
    print(f"{'setting':42} {'reached at':>12} {'iterations':>10} {'final loss':>11} {'time':>8}")
    for label, points in curves.items():
        hit = next((p for p in points if p[2] <= target), None)
        when = f"{hit[0]:.1f} s" if hit else "never"
        print(f"{label:42} {when:>12} {hit[1] if hit else '-':>10} {points[-1][2]:11.4f} "
              f"{points[-1][0]:7.1f}s")
    plot_convergence(curves, target, path)
    print(f"wrote {path}")


def plot_convergence(curves, target, path):
    plt = utils._pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for label, points in curves.items():
        seconds, _, loss = zip(*points)
        ax.plot(seconds, loss, label=label)
    ax.axhline(target, color="gray", linestyle="--", linewidth=1, label="reference's final loss")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("total loss")
    ax.set_title("loss against time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    utils.save_figure(fig, path)


# ------------------------------------------------------------------------------ real lengths

def child_run(argv):
    """Run argv in a child process: (seconds, its own peak RSS in MB, exit status, stderr)."""
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        err.seek(0)
        return seconds, usage.ru_maxrss / 1024, proc.returncode, err.read()


def looped(path, seconds, folder):
    """`path` repeated to `seconds`, as a 22050 Hz mono wav in `folder`."""
    y = utils.load_audio(path)
    n = int(seconds * utils.SAMPLE_RATE)
    name = os.path.join(folder, f"{os.path.splitext(os.path.basename(path))[0]}_{seconds:g}s.wav")
    utils.save_wav(name, np.tile(y, n // len(y) + 1)[:n])
    return name


def whole_clip_loss(content, style, spectrogram):
    """The reference's objective over the whole clip (exact Grams, seed 0), of a saved
    generated spectrogram: what segment-wise optimisation is judged by."""
    content_spec = utils.log_spectrogram(utils.load_audio(content))
    t = train.Transfer([content_spec], utils.log_spectrogram(utils.load_audio(style)),
                       device=torch.device("cpu"))
    with torch.no_grad():
        t.spec.copy_(torch.as_tensor(np.load(spectrogram))[None])
        c, s = t.losses()
    return c.item(), s.item()


def train_run(label, content, style, extra=(), judge=False):
    """One whole `train.py` run; prints its wall time, peak RSS and how it stopped, and
    with `judge` the whole-clip loss (and evaluate.py's measures, where installed)."""
    out = tempfile.mkdtemp(prefix="bench-")
    seconds, rss, status, err = child_run(
        [sys.executable, os.path.join(HERE, "train.py"), "-content", content, "-style", style,
         "-output", out, "-save_spectrogram", "-device", "cpu", *extra])
    lines = [l.strip() for l in err.replace("\r", "\n").splitlines()
             if l.strip() and not l.startswith("transfer")]
    if status:
        print(f"  {label:34} exit {status}: {lines[-1] if lines else ''}")
        return None
    steps = next((l for l in lines if " iterations in " in l), "")
    print(f"  {label:34} {seconds:7.1f} s  peak RSS {rss / 1024:5.2f} GB   {steps}")
    name = os.path.splitext(os.path.basename(content))[0] + "_as_" + \
        os.path.splitext(os.path.basename(style))[0]
    result = {"seconds": seconds, "rss": rss, "wav": os.path.join(out, name + ".wav")}
    if judge:
        c, s = whole_clip_loss(content, style, os.path.join(out, name + "_spectrogram.npy"))
        result["loss"] = c + s
        measures = ""
        try:
            import evaluate
            m = evaluate.evaluate(content, style, [result["wav"]])[0]
            measures = f", margin {m['margin']:+.3f}, STOI {m['stoi']:.3f}"
        except Exception as e:  # evaluate.py's packages are optional here
            measures = f" ({type(e).__name__}: no evaluate.py measures)"
        print(f"  {'':34} whole-clip loss: content {c:.4f} style {s:.4f} total {c + s:.4f}"
              f"{measures}")
    return result


TODAY = ("-exact", "-tol", "0")  # the whole-clip objective and full budget of before


def side_by_side(title, content, style, judge=False):
    print(f"\n{title}: {os.path.basename(content)} -> {os.path.basename(style)}, "
          f"{len(utils.load_audio(content)) / utils.SAMPLE_RATE:.1f} s / "
          f"{len(utils.load_audio(style)) / utils.SAMPLE_RATE:.1f} s")
    ours = train_run("default", content, style, judge=judge)
    today = train_run("-exact -tol 0 (the code path before)", content, style, TODAY, judge)
    if ours and today:
        line = f"  speed-up {today['seconds'] / ours['seconds']:.1f}x"
        if judge:
            line += (f"; whole-clip loss {100 * (ours['loss'] / today['loss'] - 1):+.2f}% "
                     f"against the whole-clip optimisation")
        print(line)


def per_evaluation(content_spec, style_spec, options, short=2, long=8):
    """Seconds per loss evaluation of the whole clip (every segment once, first pass), from
    runs of `short` and `long` evaluations, so that the set-up both share drops out.
    options: VoiceTransfer's, over the defaults."""
    seconds = []
    for evaluations in (short, short, long):  # the first warms up, and is not counted
        vt = train.VoiceTransfer(device="cpu", epochs=evaluations, tol=0, passes=1,
                                 print_interval=evaluations + 1, **options)  # no step lines
        start = time.perf_counter()
        vt.optimise([content_spec], style_spec, progress=False)
        seconds.append(time.perf_counter() - start)
    return (seconds[2] - seconds[1]) / (long - short)


def growth(content, style, lengths=(2, 4, 8, 16, 32)):
    print(f"\ngrowth: time per evaluation, {os.path.basename(content)} looped to each "
          f"length -> {os.path.basename(style)}")
    style_spec = utils.log_spectrogram(utils.load_audio(style))
    y = utils.load_audio(content)
    previous = None
    print(f"  {'content':>8} {'frames':>7} {'default':>10} {'ratio':>6} {'-exact':>10}")
    for seconds in lengths:
        n = int(seconds * utils.SAMPLE_RATE)
        spec = utils.log_spectrogram(np.tile(y, n // len(y) + 1)[:n])
        ours = per_evaluation(spec, style_spec, {})
        exact = per_evaluation(spec, style_spec, {"exact": True})
        ratio = f"{ours / previous:.2f}x" if previous else ""
        print(f"  {seconds:7.0f}s {spec.shape[1]:7d} {1000 * ours:8.0f}ms {ratio:>6} "
              f"{1000 * exact:8.0f}ms")
        previous = ours


# ../shared/dev-speech: 5-9 s sentences of three readers, each against a 4 s clip of
# another (cross-sex, same-sex, cross-sex)
DEV_SENTENCES = [("1688-142285-0007", "367-130732-0001"), ("1998-15444-0003", "533-1066-0009"),
                 ("533-1066-0004", "2033-164914-0004")]


def real_lengths(which, folder, reference_audio):
    audio = lambda name: os.path.join(reference_audio, name)
    if "short" in which:
        side_by_side("short pair", audio("boy18.wav"), audio("girl52.wav"), judge=True)
        side_by_side("short pair", audio("boy.wav"), audio("girl.wav"), judge=True)
    if "sentence" in which:
        twice = os.path.join(folder, "boy_twice.wav")
        y = utils.load_audio(audio("boy.wav"))
        utils.save_wav(twice, np.concatenate([y, y]))
        side_by_side("7-second sentence", twice, audio("girl.wav"), judge=True)
    if "dev" in which:  # real read sentences of other speakers (LibriSpeech readers)
        speech = lambda name: os.path.join(os.path.dirname(reference_audio), "dev-speech",
                                           name.split("-")[0], name + ".flac")
        for content, style in DEV_SENTENCES:
            print(f"\nreal sentence: {content} -> {style}, "
                  f"{len(utils.load_audio(speech(content))) / utils.SAMPLE_RATE:.1f} s / "
                  f"{len(utils.load_audio(speech(style))) / utils.SAMPLE_RATE:.1f} s")
            train_run("default", speech(content), speech(style), judge=True)
    if "music" in which:
        side_by_side("10-second music", audio("stairway.wav"), audio("nightcall.wav"))
    if "growth" in which:
        growth(audio("boy.wav"), audio("girl.wav"))
    if "loop" in which:
        content = looped(audio("stairway.wav"), 180, folder)
        style = looped(audio("nightcall.wav"), 180, folder)
        print("\n3-minute music, both clips looped")
        train_run("default", content, style)
        train_run("-exact -tol 0 -epochs 1 (one evaluation)", content, style,
                  TODAY + ("-epochs", "1"))
    if "huge" in which:
        content = looped(audio("stairway.wav"), 600, folder)
        style = looped(audio("nightcall.wav"), 1800, folder)
        print("\n10-minute content against a 30-minute style")
        train_run("default", content, style)
        train_run("-exact -tol 0", content, style, TODAY)


# ------------------------------------------------------------------------------ main

LENGTHS = ("short", "sentence", "dev", "music", "growth", "loop", "huge")


def build_parser():
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-content", default=os.path.join(HERE, "input", "male.wav"))
    p.add_argument("-style", default=os.path.join(HERE, "input", "female.wav"))
    p.add_argument("-device", choices=["all", "cpu", "cuda"], default="all")
    p.add_argument("-iters", type=int, default=None,
                   help="iterations of ours to time (default 100 on CPU, 2000 on CUDA)")
    p.add_argument("-reference_iters", type=int, default=5)
    p.add_argument("-whole_run", type=int, default=0, metavar="EPOCHS",
                   help="also time a whole train.py run of this many epochs")
    p.add_argument("-batch", type=int, default=0, help="also time a batch of this many clips")
    p.add_argument("-long", type=float, default=0, metavar="SECONDS",
                   help="also time clips looped to this length")
    p.add_argument("-long_iters", type=int, default=3)
    p.add_argument("-convergence", action="store_true",
                   help="loss against time per optimiser and init (runs the reference's "
                        "20000 iterations first unless -target is given)")
    p.add_argument("-target", type=float, default=None, help="the loss to reach")
    p.add_argument("-budget", type=float, default=None,
                   help="seconds per setting with -target (default: 600)")
    p.add_argument("-lengths", default="",
                   help=f"comma-separated: {', '.join(LENGTHS)}: whole train.py runs at real "
                        "lengths, default against -exact (the whole-clip path of before), on the "
                        "CPU; skips the other sections")
    p.add_argument("-reference_audio", default=os.path.join(HERE, "..", "shared",
                                                            "reference-audio"))
    p.add_argument("-output", default="output")
    return p


def run(args):
    if args.lengths:
        which = args.lengths.split(",")
        unknown = sorted(set(which) - set(LENGTHS))
        if unknown:
            raise UsageError(f"-lengths: {', '.join(unknown)}: not one of {', '.join(LENGTHS)}")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
        with tempfile.TemporaryDirectory() as folder:
            real_lengths(which, folder, args.reference_audio)
        return 0

    content_spec = utils.log_spectrogram(utils.load_audio(args.content))
    style_spec = utils.log_spectrogram(utils.load_audio(args.style))
    print(f"{os.path.basename(args.content)} ({content_spec.shape[1]} frames) -> "
          f"{os.path.basename(args.style)} ({style_spec.shape[1]} frames); torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
    # The CPU first, and CUDA not started before its turn: its context would otherwise
    # count in the CPU section's peak resident memory.
    for name in [d for d in ("cpu", "cuda") if args.device in ("all", d)]:
        if name == "cuda" and not torch.cuda.is_available():
            print("\nno CUDA device: the GPU section is skipped")
            continue
        device = train.pick_device(name)  # on CUDA: float32 and deterministic, as train.py
        if name == "cuda":
            print(f"\nGPU: {torch.cuda.get_device_name()}")
        iters = args.iters or (2000 if device.type == "cuda" else 100)
        speed(content_spec, style_spec, device, iters, args.reference_iters)
        if args.whole_run:
            whole_run(args.content, args.style, device, args.whole_run)
        if args.batch:
            batch(content_spec, style_spec, device, args.batch, iters)
        if args.long:
            long_clips(content_spec, style_spec, args.long, args.long_iters, device)
        if args.convergence:
            os.makedirs(args.output, exist_ok=True)
            path = os.path.join(args.output, f"convergence_{device.type}.png")
            convergence(content_spec, style_spec, device, args.target, args.budget or 600, path)
    return 0


def main(argv=None):
    """Figures print as each is measured, so Ctrl-C keeps those already printed."""
    args = build_parser().parse_args(argv)
    return guarded("bench.py", lambda: run(args), (utils.AudioError,))


if __name__ == "__main__":
    sys.exit(main())
