"""Voice style transfer with a fixed random CNN.

    python train.py -content a.wav -style b.wav

Optimises a log spectrogram so that a random, never-trained 2-D CNN sees in it the
features of the content clip and the time-axis Gram (the "texture") of the style
clip, then turns it back into sound with Griffin-Lim. With no arguments it transfers
the example voices in input/. Writes into output/ (or -output):
    <content>_as_<style>.wav               the generated speech, at the content's duration
    <content>_as_<style>_spectrograms.png  content, style and generated spectrograms
    <content>_as_<style>_loss.png          the loss curves
    <content>_as_<style>.json              the record: command, settings, seeds, versions,
                                           iterations, losses, wall time (report.py)
    index.html                             when a run writes several results (a batch of
                                           clips) or runs -ensemble: a page to listen to them
"""
import argparse
import collections
import contextlib
import math
import os
import re
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import report
import utils
import vocoder
from model import RandomCNN, StyleLoss, content_loss

HERE = os.path.dirname(os.path.abspath(__file__))
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")


class UsageError(Exception):
    """A setting the user gave that cannot work; reported as one line."""


# ------------------------------------------------------------------------------ command line

class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the whole usage; one line says enough
        self.exit(2, f"{self.prog}: error: {message} (see -h)\n")


def number(kind, low, low_ok=True, high=None):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        # math.isfinite would overflow on an int of 400 digits; an int is finite anyway
        finite = kind is int or math.isfinite(value)
        if not finite or value < low or (value == low and not low_ok):
            bound = f">= {low}" if low_ok else f"> {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value
    return parse


# torch seeds its generators with an unsigned 64-bit number, numpy's with one >= 0
MAX_SEED = 2 ** 64 - 1
seed_number = number(int, 0, high=MAX_SEED)


def check_seeds(seeds, ensemble=1):
    """-ensemble K runs the seeds s .. s+K-1 of each given seed: all must be valid."""
    if max(seeds) + ensemble - 1 > MAX_SEED:
        raise UsageError(f"-seed {max(seeds)} with -ensemble {ensemble} runs seeds up to "
                         f"{max(seeds) + ensemble - 1}, past the largest, {MAX_SEED}")


def ratio(text):
    return text if text == "auto" else number(float, 0, low_ok=False)(text)


def vocoder_name(text):
    """-vocoder's value; hifigan is refused here, before any work, when its weights are
    not installed."""
    if text == "hifigan":
        try:
            vocoder.weights_path()
        except vocoder.VocoderError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


# A preset is a set of flag values filled in before the command line is read: a flag given
# explicitly overrides the preset's value, which overrides the default. Adding one is adding
# an entry here (keys are the flags' names without the dash).
PRESETS = {
    # The reference's exact run, every setting of its method spelled out, so that it stays
    # the reference's whatever this project's defaults become.
    "reference": dict(optimizer="adam", epochs=20000, learning_rate=0.001, init="noise",
                      content_weight=100.0, style_weight=1.0, kernel="3x1", channels=32,
                      pitch_ratio=1.0, formant_ratio=1.0, ensemble=1, follow_loudness=0.0,
                      phase="random", griffin_lim_iters=50, griffin_lim_momentum=0.0,
                      vocoder="griffin_lim"),
}


def preset_flags(name):
    """The preset as command-line flags, e.g. ['-optimizer', 'adam', '-epochs', '20000']."""
    return [text for key, value in PRESETS[name].items()
            for text in (f"-{key}", f"{value:g}" if isinstance(value, float) else f"{value}")]


class PresetParser(OneLineParser):
    """Reads -preset first, then the whole command line over the preset's values."""
    set_by_caller = ()  # flags the program on top sets itself (sweep.py: the style weight)

    def parse_known_args(self, args=None, namespace=None):
        first, _ = super().parse_known_args(args)
        if getattr(first, "preset", None):
            namespace = namespace or argparse.Namespace()
            for key, value in PRESETS[first.preset].items():
                # argparse leaves what the namespace holds unless a flag sets it
                if key not in self.set_by_caller and not hasattr(namespace, key):
                    setattr(namespace, key, value)
        return super().parse_known_args(args, namespace)


def build_parser():
    p = PresetParser(prog="train.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-preset", choices=sorted(PRESETS), default=None,
                   help="start from a named set of flag values; flags given override them. "
                        + "; ".join(f"{name}: {' '.join(preset_flags(name))}"
                                    for name in sorted(PRESETS)))
    p.add_argument("-content", nargs="+", default=[os.path.join(HERE, "input", "male.wav")],
                   help="content clip(s) or folder(s) of clips; several are optimised as one batch")
    p.add_argument("-style", default=os.path.join(HERE, "input", "female.wav"),
                   help="style clip")
    p.add_argument("-output", default="output", help="folder for the results")
    p.add_argument("-content_weight", type=number(float, 0), default=100.0)
    p.add_argument("-style_weight", type=number(float, 0), default=1.0)
    p.add_argument("-epochs", type=number(int, 0), default=None,
                   help="iterations; for L-BFGS, loss evaluations, each costing one Adam "
                        "iteration (default: 20000 for adam, as the reference; 300 for lbfgs)")
    p.add_argument("-optimizer", choices=["adam", "lbfgs"], default="lbfgs",
                   help="lbfgs reaches the loss of the reference's 20000 Adam iterations in "
                        "a few hundred evaluations; adam is the reference's")
    p.add_argument("-learning_rate", type=number(float, 0, low_ok=False), default=None,
                   help="Adam's step size (default 0.001); for L-BFGS, the scale of its "
                        "first step before line search (default 1)")
    p.add_argument("-init", choices=["noise", "content"], default="noise",
                   help="start from N(0,1)*1e-3 noise (the reference) or from the content")
    p.add_argument("-tol", type=number(float, 0), default=None,
                   help="stop when the total loss falls by less than this fraction "
                        "over -tol_window iterations")
    p.add_argument("-tol_window", type=number(int, 1), default=200)
    p.add_argument("-print_interval", type=number(int, 1), default=None,
                   help="print the losses every this many iterations (default: a tenth of "
                        "the run)")
    p.add_argument("-plot_interval", type=number(int, 1), default=None,
                   help="record a point of the loss curve every this many iterations "
                        "(default: 200 points in all)")
    p.add_argument("-seed", type=seed_number, default=0,
                   help="random CNN weights, initial spectrogram and Griffin-Lim phase")
    p.add_argument("-device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("-kernel", choices=["3x1", "3x3"], default="3x1",
                   help="frequency x time size of the convolution kernel")
    p.add_argument("-style_kernel", choices=["3x1", "3x3", "3x5", "3x9"], default=None,
                   help="kernel of a second random convolution that measures only the style "
                        "(the content keeps -kernel's); wider in time, its Grams hold how "
                        "the spectrum moves (default: -kernel's network measures both, as "
                        "in the reference)")
    p.add_argument("-channels", type=number(int, 1), default=32,
                   help="output channels of the random convolution(s)")
    p.add_argument("-griffin_lim_iters", type=number(int, 1), default=50)
    p.add_argument("-griffin_lim_momentum", type=number(float, 0), default=0.0,
                   help="0: plain Griffin-Lim (the reference); 0.99: the fast variant")
    p.add_argument("-phase", choices=["random", "content"], default="random",
                   help="Griffin-Lim's starting phase: random (the reference) or the content's")
    p.add_argument("-vocoder", type=vocoder_name, choices=["griffin_lim", "hifigan"],
                   default="griffin_lim",
                   help="griffin_lim (the reference); hifigan: the universal HiFi-GAN, a "
                        "trained neural vocoder, re-renders Griffin-Lim's waveform from its "
                        "mel spectrogram")
    p.add_argument("-style_form", choices=["auto", "time", "gram"], default="auto",
                   help="exact form of the style loss: T x T products, 8160 x 8160 Grams, "
                        "or whichever is cheaper for the clips")
    p.add_argument("-normalize_gram", action="store_true",
                   help="divide each Gram by its clip's frame count (the reference does not)")
    p.add_argument("-pitch_ratio", type=ratio, default=1.0,
                   help="before the transfer, move the content's harmonics up by this factor "
                        "(its spectral envelope stays); 'auto': the style's median F0 over "
                        "the content's")
    p.add_argument("-formant_ratio", type=number(float, 0, low_ok=False), default=1.0,
                   help="before the transfer, stretch the content's spectral envelope "
                        "(formants) along frequency by this factor")
    p.add_argument("-follow_loudness", type=number(float, 0), default=0.0,
                   help="after the transfer, move each frame's loudness this fraction of the "
                        "way (in dB) toward the content's loudness contour: 0 leaves the "
                        "result as optimised (the reference), 1 takes the content's contour")
    p.add_argument("-ensemble", type=number(int, 1), default=1,
                   help="run the transfer with this many random CNNs (seeds -seed, -seed+1, "
                        "...) and average their magnitude spectrograms before Griffin-Lim: "
                        "steadier results, at this many times the cost")
    p.add_argument("-save_spectrogram", action="store_true",
                   help="also save the log spectrogram Griffin-Lim inverts (the optimised "
                        "one, after -ensemble and -follow_loudness) as <name>_spectrogram.npy")
    return p


def content_paths(names):
    """Expand folders into their audio files (sorted); keep files as given."""
    paths = []
    for name in names:
        if os.path.isdir(name):
            found = sorted(os.path.join(name, f) for f in os.listdir(name)
                           if f.lower().endswith(AUDIO_EXTENSIONS))
            if not found:
                raise utils.AudioError(f"{name}: folder holds no audio files "
                                       f"({', '.join(AUDIO_EXTENSIONS)})")
            paths += found
        else:
            paths.append(name)
    return paths


def output_names(content_files, style_file):
    """'<content>_as_<style>' for each content clip, made unique within the batch."""
    style = os.path.splitext(os.path.basename(style_file))[0]
    names, seen = [], {}
    for path in content_files:
        base = f"{os.path.splitext(os.path.basename(path))[0]}_as_{style}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("-device cuda: no CUDA device is available "
                         "(check the driver and CUDA_VISIBLE_DEVICES)")
    if name == "cuda":
        exact_cuda()
    return torch.device(name)


def exact_cuda():
    """float32 and the same result for the same seed on CUDA, as on the CPU. cuDNN would
    convolve in TF32 on Ampere and later (about 5e-4 relative error in the features), and
    pick its algorithms by timing, which can change a result from run to run."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default; stated, not assumed
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _allocation(error):
    """How much the failed allocation asked for, as its message says it, or None."""
    text = str(error)
    found = re.search(r"allocate (\d+) bytes", text)  # torch's CPU allocator
    if found:
        return f"{int(found.group(1)) / 2 ** 30:.2f} GiB"
    found = re.search(r"allocate ([\d.]+) ([KMGTP]?i?B)", text)  # CUDA's, numpy's ("256.")
    return f"{float(found.group(1)):.2f} {found.group(2)}" if found else None


def out_of_memory(error):
    """Whether `error` is an allocation that failed: torch's on either device, numpy's.
    torch's CPU allocator raises a plain RuntimeError, told apart by its words."""
    return (isinstance(error, (MemoryError, torch.OutOfMemoryError))
            or (isinstance(error, RuntimeError)
                and re.search(r"DefaultCPUAllocator|can't allocate memory", str(error))
                is not None))


@contextlib.contextmanager
def memory_reported(contents, style, device):
    """Turn running out of memory into one line: how long the clips are (what the memory
    grows with) and what the allocation that failed asked for."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        seconds = sum(len(y) for y in contents) / utils.SAMPLE_RATE
        amount = _allocation(e)
        raise UsageError(f"out of memory on {device}"
                         + (f" allocating {amount}" if amount else "")
                         + f" for {seconds:.1f} s of content ({len(contents)} clip(s)) and "
                         f"{len(style) / utils.SAMPLE_RATE:.1f} s of style: use shorter "
                         f"or fewer clips") from None


# ------------------------------------------------------------------------------ optimisation

def log(message):
    """Progress notes go to stderr, above the progress bar; stdout lists the files written."""
    tqdm.write(message, file=sys.stderr)


class Transfer:
    """A batch of generated log spectrograms, one per content clip, against one style clip.

    Clips of different lengths are zero-padded to the longest; the padding is masked out
    of the features, so each clip's losses, gradients and Adam steps are exactly those
    of a run on that clip alone.
    """

    def __init__(self, content_specs, style_spec, *, device, seed=0, kernel=(3, 1), channels=32,
                 content_weight=100.0, style_weight=1.0, learning_rate=None, optimizer="adam",
                 init="noise", style_form="auto", normalize_gram=False, style_kernel=None):
        self.device = device
        self.frames = [spec.shape[1] for spec in content_specs]
        bins, longest = content_specs[0].shape[0], max(self.frames)
        self.net = RandomCNN(seed, channels=channels, kernel=kernel).to(device)
        # The reference measures content and style through one network. A style network
        # of its own, with a kernel wider in time, sees how the spectrum moves from frame
        # to frame as well as its shape, while the content stays pinned frame by frame.
        self.style_net = self.net
        if style_kernel is not None and tuple(style_kernel) != tuple(kernel):
            self.style_net = RandomCNN(seed, channels=channels, kernel=style_kernel).to(device)
        self.content_weight, self.style_weight = content_weight, style_weight

        frames = torch.tensor(self.frames, device=device)
        self.mask = (torch.arange(longest, device=device) < frames[:, None]).float()[:, None]
        self.padded = len(set(self.frames)) > 1
        self.frame_counts = frames.float() if self.padded else None

        def padded(spec):
            return torch.nn.functional.pad(torch.as_tensor(spec), (0, longest - spec.shape[1]))

        content = torch.stack([padded(s) for s in content_specs]).to(device)
        if init == "content":
            start = content.clone()
        else:  # the reference's start: N(0, 1) * 1e-3
            start = torch.stack([padded(self.net.initial_noise((bins, n))) for n in self.frames])
        self.spec = torch.nn.Parameter(start.to(device))
        with torch.no_grad():
            self.content_features = self.features(content)
            style_features = self.style_net(torch.as_tensor(style_spec, device=device)[None])
        self.style_loss = StyleLoss(style_features, longest, form=style_form,
                                    normalize=normalize_gram).to(device)

        self.optimizer_name = optimizer
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam([self.spec], lr=learning_rate or 1e-3,
                                              capturable=device.type == "cuda")
        else:  # L-BFGS picks its own step length by line search; lr scales its first guess
            self.optimizer = torch.optim.LBFGS([self.spec], lr=learning_rate or 1.0,
                                               history_size=50, line_search_fn="strong_wolfe")

    def features(self, spec, net=None):
        net = self.net if net is None else net
        if not self.padded:
            return net(spec)
        # Masking the input too keeps a kernel wider in time from reading the padding.
        return net(spec * self.mask) * self.mask[:, None]

    def losses(self):
        """Weighted content and style losses of each clip, shape (B,) each."""
        features = self.features(self.spec)
        content = content_loss(features, self.content_features, self.frame_counts)
        if self.style_net is not self.net:
            features = self.features(self.spec, self.style_net)
        style = self.style_loss(features, self.frame_counts)
        return self.content_weight * content, self.style_weight * style

    def step(self):
        """One Adam iteration; returns the losses it started from."""
        self.optimizer.zero_grad(set_to_none=True)
        content, style = self.losses()
        (content + style).sum().backward()
        self.optimizer.step()
        return content.detach(), style.detach()

    def run(self, iterations, observe):
        """Optimise for `iterations` loss evaluations, calling observe(i, content, style)
        after each; observe may raise to stop. Returns True if the optimiser itself
        stopped before the count (L-BFGS finding no further descent)."""
        if iterations == 0:  # L-BFGS would still evaluate the loss once
            return False
        if self.optimizer_name == "lbfgs":
            return self._run_lbfgs(iterations, observe)
        step = self.step
        for i in range(1, iterations + 1):
            if i == 1 and self.device.type == "cuda" and iterations > 1:
                step, losses = graphed(self.step)
            else:
                losses = step()
            observe(i, *losses)
        return False

    def _run_lbfgs(self, iterations, observe):
        # One optimizer.step() holds all iterations: each new call would spend an extra
        # evaluation on the point the line search has just evaluated.
        self.optimizer.param_groups[0].update(max_iter=iterations, max_eval=iterations)
        count = 0

        def closure():
            nonlocal count
            self.optimizer.zero_grad()
            content, style = self.losses()
            total = (content + style).sum()
            total.backward()
            count += 1
            observe(count, content.detach(), style.detach())
            if count >= iterations:
                raise _Budget
            return total
        try:
            self.optimizer.step(closure)
        except BaseException as stop:  # the budget, the stopping rule or Ctrl-C
            # Stopped inside a line search: the history is half-updated, so drop it; a
            # later run() starts L-BFGS afresh from where the spectrogram is.
            self.optimizer.state.clear()
            if isinstance(stop, _Budget):
                return False
            raise
        return True

    def result(self):
        """The generated log spectrograms, each cut back to its clip's length."""
        spec = self.spec.detach().cpu().numpy()
        return [spec[i, :, :n] for i, n in enumerate(self.frames)]


class _Budget(Exception):
    """Raised inside the L-BFGS closure once the evaluation budget is spent."""


class Converged(Exception):
    """The stopping rule fired; the message says why."""


class NonFiniteLoss(UsageError):
    """The loss, or the spectrogram, overflowed or became NaN: settings too large for
    float arithmetic. Going on could only end in a Griffin-Lim of NaNs."""


def graphed(step):
    """Record one call of `step` (forward, backward, Adam) as a CUDA graph.

    Each iteration is then one graph launch instead of some twenty kernel launches
    driven from Python, which is what dominates a step this small. Returns a function
    that replays it and yields the same outputs, and the warm-up's outputs: the warm-up
    is a real iteration. Falls back to `step` itself if the graph cannot be captured.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        first = step()  # allocates Adam's state and autograd's buffers outside the graph
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    before = torch.cuda.current_stream()
    try:
        with torch.cuda.graph(graph):
            static = step()
    except Exception as e:  # an op or driver that cannot be captured: run eagerly
        # torch.cuda.graph's exit ends the capture before it leaves the capture stream:
        # when that raises, every later op would run on the capture stream
        torch.cuda.set_stream(before)
        log(f"CUDA graph capture failed ({root_cause(e)}); running eagerly")
        return step, first

    def replay():
        graph.replay()
        return static
    return replay, first


def root_cause(error):
    """The first exception of a chain: when a step fails inside a capture, ending the
    capture fails too, and its error (the one raised) only says the capture broke."""
    while error.__context__ is not None:
        error = error.__context__
    return f"{type(error).__name__}: {error}"


class Monitor:
    """Watches the losses as they come: progress bar, printed lines, the points of the
    loss curve, and the stopping rule (-tol over -tol_window iterations)."""

    def __init__(self, total, print_interval=1000, plot_interval=100, tol=None, window=200,
                 on_gpu=False, progress=True):
        self.total, self.print_interval, self.plot_interval = total, print_interval, plot_interval
        self.tol, self.window = tol, window
        self.on_gpu = on_gpu
        self.refresh = 100 if on_gpu else 10  # reading a loss makes the GPU wait: seldom
        self.history, self.done, self.last = [], 0, None
        self.recent = collections.deque()  # (iteration, total loss) where it was read
        self.bar = tqdm(total=total, disable=not progress, unit="it", dynamic_ncols=True,
                        desc="transfer", file=sys.stderr)

    def __call__(self, i, content, style):
        self.done, self.last = i, (content, style)
        if i == 1 or i % self.plot_interval == 0 or i == self.total:
            self.record()
        shown = not (i % self.refresh and i % self.print_interval and i != self.total)
        if not shown and self.on_gpu:  # on the CPU a loss is free to read: each is checked
            return
        c, s = float(content.sum()), float(style.sum())
        if not (math.isfinite(c) and math.isfinite(s)):  # a sum is finite if each loss is
            self.bar.close()
            when = f"by step {i}" if self.on_gpu else f"at step {i}"
            raise NonFiniteLoss(f"the loss is not finite {when} (content {c:.4g}, style "
                                f"{s:.4g}): lower -content_weight, -style_weight or "
                                f"-learning_rate")
        if not shown:
            return
        self.bar.set_postfix(content=f"{c:.4g}", style=f"{s:.4g}", total=f"{c + s:.4g}",
                             refresh=False)
        self.bar.update(i - self.bar.n)
        if i % self.print_interval == 0:
            log(f"step {i}: content {c:.4f}  style {s:.4f}  total {c + s:.4f}")
        if self.tol is None:
            return
        self.recent.append((i, c + s))
        while len(self.recent) > 1 and self.recent[1][0] <= i - self.window:
            self.recent.popleft()
        then_i, then = self.recent[0]
        if then_i <= i - self.window and then - (c + s) < self.tol * then:
            raise Converged(f"total loss fell {100 * (then - c - s) / then:.3g}% over the last "
                            f"{self.window} iterations, less than -tol {100 * self.tol:g}%")

    def record(self):
        """Add the latest losses to the curve (once per iteration)."""
        if self.last is not None and (not self.history or self.history[-1][0] != self.done):
            self.history.append((self.done, *(x.cpu().numpy().copy() for x in self.last)))

    def close(self):
        self.record()
        self.bar.close()


def optimise(transfer, epochs, print_interval=1000, plot_interval=100, tol=None, window=200,
             progress=True):
    """Run up to `epochs` iterations; Ctrl-C or the stopping rule ends it early.

    Returns (history, iterations done, seconds, why it stopped). history: list of
    (step, content (B,), style (B,)) at step 1, every plot_interval and the last step.
    """
    on_gpu = transfer.device.type == "cuda"
    monitor = Monitor(epochs, print_interval, plot_interval, tol, window, on_gpu, progress)
    start = time.perf_counter()
    try:
        gave_up = transfer.run(epochs, monitor)
        why = ("L-BFGS found no further descent" if gave_up else f"ran all {epochs} iterations")
    except Converged as e:
        why = f"converged: {e}"
    except KeyboardInterrupt:
        why = "interrupted (Ctrl-C): writing what the spectrogram has reached"
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    monitor.close()
    log(f"stopped at step {monitor.done}: {why}")
    return monitor.history, monitor.done, seconds, why


# ------------------------------------------------------------------------------ outputs

def check_invertible(generated):
    """Griffin-Lim needs a finite magnitude exp(S) - 1 in every bin of every clip. The
    last Adam step comes after the last loss was read, and can leave NaN, or values whose
    exp overflows, that no loss has shown: checked before anything is written."""
    for spec in generated:
        with np.errstate(over="ignore"):
            finite = np.all(np.isfinite(utils.magnitude(spec)))
        if not finite:
            raise NonFiniteLoss("the optimised spectrogram is not finite (or exp(S) - 1 "
                                "overflows): lower -content_weight, -style_weight or "
                                "-learning_rate")


def output_paths(out_dir, name, args):
    """The files write_outputs makes for one clip, in the order it makes them: the wav,
    the spectrograms, the loss curves and, with -save_spectrogram, the array."""
    base = os.path.join(out_dir, name)
    paths = [base + ".wav", base + "_spectrograms.png", base + "_loss.png"]
    return paths + [base + "_spectrogram.npy"] if args.save_spectrogram else paths


def planned_outputs(out_dir, name, args):
    """Every file one clip's result gets: output_paths() and the record (report.py)."""
    paths = output_paths(out_dir, name, args)
    return paths + [report.record_path(paths[0])]


def several_results(names, args):
    """Whether a run writes a listening page: several results, or runs, to compare."""
    return len(names) > 1 or args.ensemble > 1


def write_outputs(out_dir, name, content_audio, content_spec, style_spec, generated, runs,
                  index, args, device, written=None):
    """Everything one clip's run produces; each file appears whole or not at all, and is
    added to `written` as soon as it is there. Returns output_paths().

    runs: (seed, history) per random CNN, as transfer() returns them; the loss picture
    has the curves of each.
    """
    paths = output_paths(out_dir, name, args)
    wav, spectrograms, loss = paths[:3]
    done = written if written is not None else []
    phase = np.angle(utils.stft(content_audio)) if args.phase == "content" else None
    audio = utils.griffin_lim(generated, len(content_audio), iters=args.griffin_lim_iters,
                              phase=phase, momentum=args.griffin_lim_momentum, seed=args.seed,
                              device=device)
    if not np.all(np.isfinite(audio)):  # float32 on the GPU overflows sooner than the check
        raise NonFiniteLoss(f"{wav}: Griffin-Lim's result is not finite; the spectrogram "
                            f"reaches {np.max(generated):.4g}: lower -content_weight, "
                            f"-style_weight or -learning_rate")
    if args.vocoder == "hifigan":
        audio = vocoder.from_audio(audio, device)
    audio, gain = utils.fit_full_scale(audio)
    if gain < 1:  # the wav only: the spectrogram saved and pictured stays as optimised
        log(f"{wav}: Griffin-Lim's peak {utils.FULL_SCALE / gain:.3g} passes full scale: "
            f"scaled by {20 * math.log10(gain):.1f} dB so that it does not clip")
    utils.save_wav(wav, audio)
    done.append(wav)
    utils.plot_spectrograms([("content", content_spec), ("style", style_spec),
                             ("generated", generated)], spectrograms)
    done.append(spectrograms)
    curves = {}
    for seed, history in runs:
        steps = [h[0] for h in history]
        content = [float(h[1][index]) for h in history]
        style = [float(h[2][index]) for h in history]
        label = f" (seed {seed})" if len(runs) > 1 else ""
        curves.update({"content" + label: list(zip(steps, content)),
                       "style" + label: list(zip(steps, style)),
                       "total" + label: list(zip(steps, np.add(content, style)))})
    utils.plot_losses(curves, loss, title=name)
    done.append(loss)
    if args.save_spectrogram:
        utils.atomic_write(paths[3], lambda tmp: np.save(tmp, generated))
        done.append(paths[3])
    return paths


def pitch_ratios(setting, contents, style):
    """The factor -pitch_ratio asks for, per content clip: a number as given, or for
    'auto' the style's median F0 over that clip's (the style's is measured once)."""
    if setting != "auto":
        return [setting] * len(contents)
    f0_style = utils.median_f0(style)
    if f0_style is None:
        raise UsageError("-pitch_ratio auto: no voiced frames in the style clip to measure "
                         "its pitch; give a number")
    ratios = []
    for y in contents:
        f0_content = utils.median_f0(y)
        if f0_content is None:
            raise UsageError("-pitch_ratio auto: no voiced frames in the content clip to "
                             "measure its pitch; give a number")
        log(f"-pitch_ratio auto: style {f0_style:.0f} Hz / content {f0_content:.0f} Hz = "
            f"{f0_style / f0_content:.3f}")
        ratios.append(f0_style / f0_content)
    return ratios


def input_spectrograms(args, contents, style):
    """The content log spectrograms (reshaped by -pitch_ratio / -formant_ratio) and the
    style's."""
    if args.pitch_ratio != 1 or args.formant_ratio != 1:
        ratios = pitch_ratios(args.pitch_ratio, contents, style)
        content_specs = [utils.shift_pitch_formants(y, r, args.formant_ratio)
                         for y, r in zip(contents, ratios)]
    else:
        content_specs = [utils.log_spectrogram(y) for y in contents]
    return content_specs, utils.log_spectrogram(style)


def make_transfer(args, content_specs, style_spec, device, seed):
    """The Transfer that `args` ask for, with the random CNN of `seed`."""
    def size(text):
        return tuple(int(k) for k in text.split("x"))

    return Transfer(content_specs, style_spec, device=device, seed=seed, kernel=size(args.kernel),
                    style_kernel=size(args.style_kernel) if args.style_kernel else None,
                    channels=args.channels,
                    content_weight=args.content_weight, style_weight=args.style_weight,
                    learning_rate=args.learning_rate, optimizer=args.optimizer,
                    init=args.init, style_form=args.style_form,
                    normalize_gram=args.normalize_gram)


def average_magnitudes(log_specs):
    """One log1p spectrogram whose magnitude is the mean of theirs.

    Each random CNN leaves texture of its own on top of what all of them agree on; the
    mean keeps the shared part and thins the rest. Magnitudes, not logs, are averaged:
    measured, that kept more of the style (see EXPERIMENTS.md).
    """
    if len(log_specs) == 1:  # one run: its own spectrogram, bit for bit
        return log_specs[0]
    return np.log1p(np.mean([np.expm1(s) for s in log_specs], axis=0)).astype(np.float32)


def transfer(args, contents, style, device, progress=True):
    """The whole optimisation `args` ask for, shared with sweep.py: -ensemble runs, one
    after another, each with its own random CNN.

    Returns (content_specs, style_spec, generated, runs, why): generated holds one log
    spectrogram per content clip (the ensemble's average, then -follow_loudness: what
    Griffin-Lim will invert); runs one (seed, history) per random CNN that ran; why says
    how the last one stopped. Ctrl-C keeps the runs done; the interrupted one only when
    no other finished.
    """
    content_specs, style_spec = input_spectrograms(args, contents, style)
    results, runs = [], []
    try:
        for seed in range(args.seed, args.seed + args.ensemble):
            member = make_transfer(args, content_specs, style_spec, device, seed)
            if seed == args.seed:
                log(f"{len(contents)} content clip(s) {member.frames} frames, style "
                    f"{style_spec.shape[1]} frames, on {device}, style loss in "
                    f"{member.style_loss.form} form")
            if args.ensemble > 1:
                log(f"random CNN {seed - args.seed + 1} of {args.ensemble}: seed {seed}")
            history, done, seconds, why = optimise(member, args.epochs, args.print_interval,
                                                   args.plot_interval, args.tol,
                                                   args.tol_window, progress)
            if done:
                log(f"{done} iterations in {seconds:.1f} s "
                    f"({1000 * seconds / done:.2f} ms each)")
            interrupted = why.startswith("interrupted")
            if interrupted and results:  # half a run would weigh as much as a whole one
                log(f"random CNN {seed - args.seed + 1} was cut short: left out, the "
                    f"average is of the {len(results)} that finished")
            else:
                results.append(member.result())
                runs.append((seed, history))
            del member  # its activations and optimiser state: free before the next one
            if interrupted:
                break
    except KeyboardInterrupt:  # between two runs, while the next one was being set up
        if not results:
            raise
        why = "interrupted (Ctrl-C): writing what the finished runs reached"
        log(why)
    generated = [average_magnitudes([r[i] for r in results]) for i in range(len(contents))]
    if args.follow_loudness:
        generated = [utils.follow_loudness(g, c, args.follow_loudness)
                     for g, c in zip(generated, content_specs)]
    return content_specs, style_spec, generated, runs, why


DEFAULT_EPOCHS = {"adam": 20000, "lbfgs": 300}


def settle_defaults(args):
    """The defaults that follow other flags: the budget follows the optimiser, the print and
    plot intervals follow the budget."""
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.optimizer]
    args.print_interval = args.print_interval or max(1, args.epochs // 10)
    args.plot_interval = args.plot_interval or max(1, args.epochs // 200)


def run(args):
    started = time.perf_counter()  # the record's wall time: loading to writing
    settle_defaults(args)
    check_seeds([args.seed], args.ensemble)
    device = pick_device(args.device)
    files = content_paths(args.content)
    contents = [utils.load_audio(f) for f in files]  # every input is checked before any work
    style = utils.load_audio(args.style)
    names = output_names(files, args.style)
    planned = [p for name in names for p in planned_outputs(args.output, name, args)]
    if several_results(names, args):
        planned.append(os.path.join(args.output, report.PAGE))
    written = []
    # the output is checked now, not after the work
    with utils.output_dir(args.output, planned), memory_reported(contents, style, device):
        try:
            content_specs, style_spec, generated, runs, why = transfer(args, contents, style,
                                                                       device)
            check_invertible(generated)
            for i, spec in enumerate(generated):
                wav = write_outputs(args.output, names[i], contents[i], content_specs[i],
                                    style_spec, spec, runs, i, args, device, written)[0]
                written.append(report.write_record(wav, report.run_record(
                    args, files[i], runs, i, why, device, time.perf_counter() - started)))
            if several_results(names, args):  # to compare by ear
                written.append(report.write_page(
                    args.output, [os.path.join(args.output, n + ".wav") for n in names]))
        finally:  # on a failure or a second Ctrl-C too: what is there, whole, is listed
            for path in written:
                print(path)
    return 130 if why.startswith("interrupted") else 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (utils.AudioError, UsageError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
