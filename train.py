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
import ctypes
import ctypes.util
import dataclasses
import functools
import math
import os
import re
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import lbfgs
import report
import utils
import vocoder
from cli import (UsageError, OneLineParser, check_seeds, guarded, log, number, pick_device,
                 seed_number)
from model import RandomCNN, StyleGram, StyleLoss, content_loss

HERE = os.path.dirname(os.path.abspath(__file__))
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")
STYLE_BLOCK = 4096  # frames of style features computed at once: 134 MB at 8160 rows
STYLE_RANK = 256  # columns of the style Gram's factor by default
REFINE_RANK = 128  # columns of a refined segment's target (StyleGram.corrected)
# A clip at most this many segments long is optimised whole: two segments of it would
# overlap by half or more, and on clips this long their two passes took as long as one
# run over the whole clip or longer, and ended further from its optimum (EXPERIMENTS.md).
WHOLE_WITHIN = 1.5
FIRST_PASS_TOL = 3  # times -tol: where a first pass over segments stops when a second follows
# A later pass starts each segment near its optimum: it reads its progress over this part
# of -tol_window, at this part of -tol (the same rate of fall), so that it stops sooner
# once flat. On the 3-minute songs its segments ran 12-51 evaluations, 20 of them at least
# spent confirming a flat end.
REFINE_WINDOW = 0.5
FIRST_PASS_RANK = 64  # columns of the style's factor in such a first pass
RESTART_GAIN = 1e-2  # L-BFGS, having given up, starts afresh if its last start gained this,
RESTART_WITHIN = 50  # ... and only while it has run fewer evaluations than this
# -formant_ratio auto: formants follow pitch to about this power across adult voices (a
# woman's F0 is typically 1.75 times a man's, 210 against 120 Hz by Traunmueller and
# Eriksson's survey, and her formants some 15-20% higher: 1.75 ** 0.3 = 1.18)
FORMANT_PER_PITCH = 0.3
FORMANT_RANGE = (0.85, 1.2)  # and no further, whatever the F0s measured
LBFGS_HISTORY = 50  # steps L-BFGS remembers, on a clip optimised whole
# ... and on a segment. Each iteration's two-loop recursion reads them all twice: at 50
# steps of a 3 s segment it took 5.2 ms (7% of an evaluation), at 20 steps 1.75 ms, and a
# long file's thousands of segment evaluations took as many at 20 steps as at 50. Whole
# clips keep the 50 their settings and -preset voice were measured with: at 20 the
# preset's DNSMOS on boy -> girl came out 0.15 lower (EXPERIMENTS.md).
SEGMENT_LBFGS_HISTORY = 20
OVERFLOW_RETRIES = 5  # L-BFGS steps back from an overflowing trial point this often in a row
LONGER_STYLE = 2  # a style this many times the content's length gets a note (see -normalize_gram)
ADAM_BATCH_BYTES = 2 ** 30  # Adam's segments optimised together: their features within this
BASE_BYTES = 700 * 2 ** 20  # the interpreter with torch, librosa and matplotlib loaded


# ------------------------------------------------------------------------------ command line

def ratio(text):
    return text if text == "auto" else number(float, 0, low_ok=False)(text)


def rank(text):
    return text if text == "full" else number(int, 1)(text)


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
                      vocoder="griffin_lim", exact=True, tol=0.0, style_cap=0.0,
                      style_floor=0.0),
    # Converting a voice: the setting that measured best across the reference's pairs and
    # real LibriSpeech readers (EXPERIMENTS.md). A second random network 5 frames wide
    # carries the style (how the spectrum moves, not only its shape), the content keeps
    # the 3x1 one; the content's formants moved toward where the style's pitch says
    # that voice's are (without it the content loss holds the content's); loudness half
    # way back to the content's contour keeps syllables and pauses; Griffin-Lim from the
    # content's phase, fast; HiFi-GAN renders the result. A style recording longer than
    # twice the content counts as twice as long (the longest measured in this setting):
    # more of the voice to draw from, no louder a result. One shorter than the content
    # counts as long as it: a paragraph against a sentence of the voice moved half as far
    # without (LibriSpeech, 15-18 s against 3-4.5 s). Segments of 5 s: sentences up to
    # 7.5 s are optimised whole and longer ones in fewer, longer pieces; cut in 3-s
    # segments, this setting's LibriSpeech sentences of 5-9 s came out less natural and
    # less clear (DNSMOS lower on 10 of 11, STOI on 10 of 11), in about 0.8 times the time.
    "voice": dict(style_kernel="3x5", style_weight=0.1, formant_ratio="auto",
                  follow_loudness=0.5, phase="content", griffin_lim_momentum=0.99,
                  vocoder="hifigan", style_cap=float(LONGER_STYLE), style_floor=1.0,
                  segment=5.0),
}


def preset_flags(name, keys=None):
    """The preset as command-line flags, e.g. ['-optimizer', 'adam', '-epochs', '20000'];
    a switch that is on is its flag alone. keys: only these of its flags."""
    flags = []
    for key, value in PRESETS[name].items():
        if keys is not None and key not in keys:
            continue
        flags.append(f"-{key}")
        if value is not True:
            flags.append(f"{value:g}" if isinstance(value, float) else f"{value}")
    return flags


class PresetParser(OneLineParser):
    """Reads -preset first, then the whole command line over the preset's values."""
    set_by_caller = ()  # flags the program on top sets itself (sweep.py: the style weight)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        first, _ = super().parse_known_args(args)
        if getattr(first, "preset", None):
            given = {action.dest for action in self._actions for flag in action.option_strings
                     for word in args if word == flag or word.startswith(flag + "=")}
            keys = [key for key in PRESETS[first.preset]
                    if key not in self.set_by_caller and key not in given]
            # the preset's values go through their flags' own types, so each is checked
            # (-vocoder hifigan: its weights installed) before any work, as when typed;
            # a value the command line replaces is not
            typed, _ = super().parse_known_args(preset_flags(first.preset, keys))
            namespace = namespace or argparse.Namespace()
            for key in keys:
                # argparse leaves what the namespace holds unless a flag sets it
                if not hasattr(namespace, key):
                    setattr(namespace, key, getattr(typed, key))
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
                        "over -tol_window iterations; 0 runs all -epochs (default: 0.003 "
                        "for lbfgs, where the loss is flat long before its budget; 0 for "
                        "adam, as the reference); a first pass over segments, which a "
                        "second refines, stops at 3 times it, the second at half of it "
                        "over half the window")
    p.add_argument("-tol_window", type=number(int, 1), default=20)
    p.add_argument("-print_interval", type=number(int, 1), default=None,
                   help="print the losses every this many iterations of a clip optimised "
                        "whole (default: a tenth of the run); segments show on the bar only")
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
    p.add_argument("-style_cap", type=number(float, 0), default=0.0,
                   help="count a style more than this many times as long as the content as "
                        "only that long (its Gram scaled down to that length), so that a long "
                        "recording of the voice asks for no louder a result; 0: off (the "
                        "reference)")
    p.add_argument("-style_floor", type=number(float, 0), default=0.0,
                   help="count a style less than this many times as long as the content as "
                        "that long (its Gram scaled up to that length), so that a content "
                        "much longer than the recording of the voice is set against as much "
                        "of it per frame as a sentence is; at most -style_cap; 0: off (the "
                        "reference)")
    p.add_argument("-pitch_ratio", type=ratio, default=1.0,
                   help="before the transfer, move the content's harmonics up by this factor "
                        "(its spectral envelope stays); 'auto': the style's median F0 over "
                        "the content's")
    p.add_argument("-formant_ratio", type=ratio, default=1.0,
                   help="before the transfer, stretch the content's spectral envelope "
                        "(formants) along frequency by this factor; 'auto': the style's "
                        f"median F0 over the content's to the power {FORMANT_PER_PITCH} "
                        "(across adult voices formants rise with pitch so), held within "
                        f"{FORMANT_RANGE[0]}-{FORMANT_RANGE[1]}")
    p.add_argument("-follow_loudness", type=number(float, 0), default=0.0,
                   help="after the transfer, move each frame's loudness this fraction of the "
                        "way (in dB) toward the content's loudness contour: 0 leaves the "
                        "result as optimised (the reference), 1 takes the content's contour")
    p.add_argument("-ensemble", type=number(int, 1), default=1,
                   help="run the transfer with this many random CNNs (seeds -seed, -seed+1, "
                        "...) and average their magnitude spectrograms before Griffin-Lim: "
                        "steadier results, at this many times the cost")
    p.add_argument("-exact", action="store_true",
                   help="optimise each clip whole against the exact style Gram, as the "
                        "reference: cost and memory grow with the square of the length")
    p.add_argument("-segment", type=number(float, 0, low_ok=False), default=3.0,
                   help=f"seconds per segment: clips over {WHOLE_WITHIN:g} segments are "
                        "optimised in overlapping segments (one fewer and longer where that "
                        "costs less), cross-faded where they meet")
    p.add_argument("-overlap", type=number(float, 0), default=0.25,
                   help="seconds by which segments overlap (at most half a segment)")
    p.add_argument("-style_rank", type=rank, default=STYLE_RANK,
                   help="columns of the factor of the style's Gram the loss uses: the exact "
                        "style when it has no more frames than this, else the Gram's best "
                        "approximation of this rank; 'full': exact at any length")
    p.add_argument("-passes", type=number(int, 1), default=2,
                   help="rounds over a clip's segments: the first gives each its share of "
                        "the style; each later one sets every segment against the residual "
                        "of the whole clip as stitched, toward the whole clip's optimum")
    p.add_argument("-max_memory", type=number(float, 0, low_ok=False), default=None,
                   help="GB a run may use: one that would need more is refused before it "
                        "starts (default: the memory the system has available)")
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

def networks(seed, kernel=(3, 1), style_kernel=None, channels=32, device="cpu"):
    """The random CNN of `seed`, and the one the style loss looks through: the same one
    (the reference) unless `style_kernel` asks for a second, of its own kernel."""
    net = RandomCNN(seed, channels=channels, kernel=kernel).to(device)
    # A style network wider in time sees how the spectrum moves from frame to frame as
    # well as its shape, while the content stays pinned frame by frame.
    if style_kernel is None or tuple(style_kernel) == tuple(kernel):
        return net, net
    return net, RandomCNN(seed, channels=channels, kernel=style_kernel).to(device)


def features_in_blocks(spec, net, block=STYLE_BLOCK):
    """The features (1, C, H, b) of a log spectrogram (F, T) through `net`, `block` frames
    at a time, each block computed with the frames its kernel reads beyond it, so that
    the blocks are the whole clip's features, which never exist all at once."""
    spec = torch.as_tensor(spec)
    reach = net.conv.kernel_size[1] // 2  # frames the kernel reads on each side
    device = net.conv.weight.device
    with torch.no_grad():
        for start in range(0, spec.shape[1], block):
            stop = min(start + block, spec.shape[1])
            lo, hi = max(start - reach, 0), min(stop + reach, spec.shape[1])
            features = net(spec[:, lo:hi].to(device)[None])
            yield features[..., start - lo:features.shape[-1] - (hi - stop)]


def style_statistics(style_spec, style_net, rank=None, device="cpu", block=STYLE_BLOCK):
    """The StyleGram of a style log spectrogram (F, Ts) through `style_net`: from its
    features whole when it has at most `block` frames, else block by block. rank None:
    exact; else a factor of at most `rank` columns."""
    if style_spec.shape[1] <= block:
        with torch.no_grad():
            features = style_net(torch.as_tensor(style_spec).to(device)[None])
        return StyleGram.from_features(features, rank)
    return StyleGram.from_blocks(features_in_blocks(style_spec, style_net, block), rank)


@functools.cache  # a setting of the process: once is enough
def reuse_freed_memory():
    """Have the C library's malloc keep the feature maps it frees for the next evaluation.

    Each loss evaluation allocates and frees a few dozen maps of N x T floats (17 MB for a
    3-s segment). glibc hands blocks that large back to the kernel on free and takes fresh
    ones on the next malloc, and the kernel zeroes each new page at its first touch:
    measured on a 3-s segment, 24,000 page faults and some 50 ms of system time per
    evaluation, a third of its cost. Raising malloc's mmap threshold to its maximum
    (32 MB) and never trimming its heap keeps them; the price is that memory once used
    stays with the process until it ends (peak RSS counted it already). Without glibc's
    mallopt (macOS, Windows) this does nothing."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
    mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20)
    mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)


class Transfer:
    """A batch of generated log spectrograms, one per content clip or segment, against one
    style clip, optimised as one problem.

    Clips of different lengths are zero-padded to the longest; the padding is masked out
    of the features, so each clip's losses and gradients, and its Adam steps, are exactly
    those of a run on that clip alone. (L-BFGS shares one line search and one history
    over the batch: train.py gives it one clip or segment at a time.)

    `style`: the style's log spectrogram (F, Ts), or its StyleGram made by
    style_statistics() through `nets`' style network. `whole_frames` (B,): for segments,
    the frame count of the clip each is cut from, and `shares` (B,) the part of the
    style's Gram each is to carry (see StyleLoss); `targets` (B,), the multiple of the
    style's Gram each is set against (style_targets). `initial`: the starting spectrograms
    (F, T_b), instead of drawing them as `init` says. `first_step`, `stop_at_rounding`:
    L-BFGS's options of those names (lbfgs.LBFGS).
    """

    def __init__(self, content_specs, style, *, device, seed=0, kernel=(3, 1), channels=32,
                 content_weight=100.0, style_weight=1.0, learning_rate=None, optimizer="adam",
                 init="noise", style_form="auto", normalize_gram=False, style_kernel=None,
                 nets=None, whole_frames=None, shares=None, targets=None, initial=None,
                 first_step=None, stop_at_rounding=False):
        reuse_freed_memory()
        self.device = device
        self.frames = [spec.shape[1] for spec in content_specs]
        bins, longest = content_specs[0].shape[0], max(self.frames)
        self.net, self.style_net = nets or networks(seed, kernel, style_kernel, channels,
                                                    device)
        self.content_weight, self.style_weight = content_weight, style_weight

        frames = torch.tensor(self.frames, device=device)
        self.mask = (torch.arange(longest, device=device) < frames[:, None]).float()[:, None]
        self.padded = len(set(self.frames)) > 1
        self.frame_counts = frames.float() if self.padded else None
        self.whole = self.shares = None
        if whole_frames is not None and list(whole_frames) != self.frames:
            self.whole = torch.tensor(whole_frames, device=device, dtype=torch.float32)
            self.frame_counts = frames.float()
            if shares is not None:
                self.shares = torch.tensor(shares, device=device, dtype=torch.float32)
        self.targets = None
        if targets is not None and any(t != 1 for t in targets):
            self.targets = torch.tensor(targets, device=device, dtype=torch.float32)

        def padded(spec):
            return torch.nn.functional.pad(torch.as_tensor(spec), (0, longest - spec.shape[1]))

        content = torch.stack([padded(s) for s in content_specs]).to(device)
        if initial is not None:
            start = torch.stack([padded(s) for s in initial])
        elif init == "content":
            start = content.clone()
        else:  # the reference's start: N(0, 1) * 1e-3
            start = torch.stack([padded(self.net.initial_noise((bins, n))) for n in self.frames])
        self.spec = torch.nn.Parameter(start.to(device))
        with torch.no_grad():
            self.content_features = self.features(content)
        if not isinstance(style, StyleGram):
            style = style_statistics(style, self.style_net, device=device)
        self.style_loss = StyleLoss(style, longest, form=style_form,
                                    normalize=normalize_gram).to(device)

        self.optimizer_name = optimizer
        self.kept = None  # L-BFGS: the losses of the point it ended at, its best
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam([self.spec], lr=learning_rate or 1e-3,
                                              capturable=device.type == "cuda")
        else:  # L-BFGS picks its own step length by line search; lr scales its first guess
            history = LBFGS_HISTORY if self.whole is None else SEGMENT_LBFGS_HISTORY
            self.optimizer = lbfgs.LBFGS(self.spec, lr=learning_rate or 1.0, history=history,
                                         first_step=first_step,
                                         stop_at_rounding=stop_at_rounding)

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
        style = self.style_loss(features, self.frame_counts, self.whole, self.shares,
                                self.targets)
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
        # One minimise() holds all iterations: each new call would spend an extra
        # evaluation on the point the line search has just evaluated.
        count, best, overflows, gave_up_at = 0, None, 0, None

        def closure():
            nonlocal count, best, overflows
            self.spec.grad = None
            content, style = self.losses()
            total = (content + style).sum()
            count += 1
            if not torch.isfinite(total):
                if best is None or overflows >= OVERFLOW_RETRIES:
                    raise not_finite(count, content.detach().sum(), style.detach().sum(),
                                     f", {overflows} times after stepping back" if overflows
                                     else "")
                raise _Overflow
            total.backward()
            if best is None or total < best[0]:
                best = (total.detach(), self.spec.detach().clone(), content.detach(),
                        style.detach())
                overflows = 0
            observe(count, content.detach(), style.detach())
            if count >= iterations:
                raise _Budget
            return total

        def back_to_best():
            self.optimizer.reset()
            with torch.no_grad():
                self.spec.copy_(best[1])
            self.kept = best[2:]
        while True:
            try:
                self.optimizer.minimise(closure)
            except _Overflow:
                # A line search tried a step so long that the loss overflowed (from a
                # noise start the first losses are 1e5 times the last, and L-BFGS
                # extrapolates). Such a point is never taken, but its NaN gradient would
                # poison the search: step back to the best point and start L-BFGS afresh,
                # whose first step is a short gradient step.
                overflows += 1
                back_to_best()
                continue
            except BaseException as stop:  # the budget, the stopping rule or Ctrl-C
                # Stopped inside a line search, at a trial point that may be far worse
                # (the stopping rule sees a loss that rose as one that stopped falling):
                # keep the best point instead. The history is half-updated, so it goes; a
                # later run() starts L-BFGS afresh from the point kept.
                if best is not None:
                    back_to_best()
                if isinstance(stop, _Budget):
                    return False
                raise
            # L-BFGS gave up: its line search found no step that lowers the loss along
            # a direction its history made. After a long jump (from the noise start, with
            # a heavy style weight) that history misleads, and it gave up with the style
            # loss 1e4 times its end (boy18 at -style_weight 30, 23 evaluations). Start
            # afresh from the best point, while a fresh start gains RESTART_GAIN or more.
            # A give-up after RESTART_WITHIN evaluations is taken as convergence: music
            # segments give up there often, and restarting them all slowed long files.
            if best is not None and count < min(iterations, RESTART_WITHIN) and (
                    gave_up_at is None or best[0] < gave_up_at * (1 - RESTART_GAIN)):
                gave_up_at = best[0]
                back_to_best()
                continue
            back_to_best()
            return True

    def result(self):
        """The generated log spectrograms, each cut back to its clip's length."""
        spec = self.spec.detach().cpu().numpy()
        return [spec[i, :, :n] for i, n in enumerate(self.frames)]


class _Budget(Exception):
    """Raised inside the L-BFGS closure once the evaluation budget is spent."""


class _Overflow(Exception):
    """Raised inside the L-BFGS closure at a trial point whose loss is not finite."""


class Converged(Exception):
    """The stopping rule fired; the message says why."""


class NonFiniteLoss(UsageError):
    """The loss, or the spectrogram, overflowed or became NaN: settings too large for
    float arithmetic. Going on could only end in a Griffin-Lim of NaNs."""


def not_finite(step, content, style, why="", gpu=False):
    when = f"by step {step}" if gpu else f"at step {step}"
    return NonFiniteLoss(f"the loss is not finite {when} (content {float(content):.4g}, "
                         f"style {float(style):.4g}){why}: lower -content_weight, "
                         f"-style_weight or -learning_rate")


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
    loss curve, and the stopping rule (-tol over -tol_window iterations).

    `bar`: a progress bar shared by several runs (segments), this one's iterations
    counted from `offset`; by default a bar of its own.
    """

    def __init__(self, total, print_interval=1000, plot_interval=100, tol=None, window=200,
                 on_gpu=False, progress=True, bar=None, offset=0):
        self.total, self.print_interval, self.plot_interval = total, print_interval, plot_interval
        self.tol, self.window = tol, window
        self.on_gpu = on_gpu
        self.refresh = 100 if on_gpu else 10  # reading a loss makes the GPU wait: seldom
        self.history, self.done, self.last = [], 0, None
        self.recent = collections.deque()  # (iteration, lowest total loss by then)
        self.first = self.best = None  # total losses: the first read, the lowest so far
        self.own_bar, self.offset = bar is None, offset
        self.bar = bar if bar is not None else progress_bar(total, progress)

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
            raise not_finite(i, c, s, gpu=self.on_gpu)
        if shown:
            self.bar.set_postfix(content=f"{c:.4g}", style=f"{s:.4g}", total=f"{c + s:.4g}",
                                 refresh=False)
            self.bar.update(self.offset + i - self.bar.n)
            if i % self.print_interval == 0:
                log(f"step {i}: content {c:.4f}  style {s:.4f}  total {c + s:.4f}")
        if self.tol:
            self.check_progress(i, c + s)

    def check_progress(self, i, total):
        """The stopping rule, on the lowest total loss reached so far: L-BFGS's line
        searches try points worse than the one they stand on, which say nothing about
        whether it still gains. Checked at every iteration the loss is read (on the CPU,
        all of them), so that a run ends within an iteration of where the rule holds.
        It waits for the first gain of -tol: from the noise start the first steps are
        tiny, and a 3-minute song had one segment's loss flat for its first 21
        evaluations, which stopped it there, silent (L-BFGS still ends a run that gains
        nothing, by giving up)."""
        if self.first is None:
            self.first = self.best = total
        self.best = min(self.best, total)
        if self.best > self.first * (1 - self.tol):
            self.recent.clear()
            return
        self.recent.append((i, self.best))
        while len(self.recent) > 1 and self.recent[1][0] <= i - self.window:
            self.recent.popleft()
        then_i, then = self.recent[0]
        if then_i <= i - self.window and then - self.best < self.tol * then:
            raise Converged(f"total loss fell {100 * (then - self.best) / then:.3g}% over the "
                            f"last {self.window} iterations, less than -tol {100 * self.tol:g}%")

    def record(self):
        """Add the latest losses to the curve (once per iteration)."""
        if self.last is not None and (not self.history or self.history[-1][0] != self.done):
            self.history.append((self.done, *(x.cpu().numpy().copy() for x in self.last)))

    def end_at(self, losses):
        """The losses of the point the optimiser kept, in place of the last evaluated."""
        self.last = losses
        if self.history and self.history[-1][0] == self.done:
            self.history.pop()

    def close(self):
        self.record()
        if self.own_bar:
            self.bar.close()


def progress_bar(total, progress=True):
    return tqdm(total=total, disable=not progress, unit="it", dynamic_ncols=True,
                desc="transfer", file=sys.stderr)


def optimise(transfer, epochs, print_interval=1000, plot_interval=100, tol=None, window=200,
             progress=True, bar=None, offset=0, quiet=False):
    """Run up to `epochs` iterations; Ctrl-C or the stopping rule ends it early.

    Returns (history, iterations done, seconds, why it stopped). history: list of
    (step, content (B,), style (B,)) at step 1, every plot_interval and the last step.
    `quiet`: leave the closing line to the caller.
    """
    on_gpu = transfer.device.type == "cuda"
    monitor = Monitor(epochs, print_interval, plot_interval, tol, window, on_gpu, progress,
                      bar, offset)
    start = time.perf_counter()
    try:
        gave_up = transfer.run(epochs, monitor)
        why = ("L-BFGS found no further descent" if gave_up else f"ran all {epochs} iterations")
    except Converged as e:
        why = f"converged: {e}"
    except KeyboardInterrupt:
        why = "interrupted (Ctrl-C): writing what the spectrogram has reached"
    except NonFiniteLoss:  # the error's line must not share its line with the bar
        monitor.bar.close()
        raise
    if transfer.kept is not None:  # the curve ends at the point kept, not the last tried
        monitor.end_at(transfer.kept)
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    monitor.close()
    if not quiet:
        log(f"stopped at step {monitor.done}: {why}")
    return monitor.history, monitor.done, seconds, why


# ------------------------------------------------------------------------------ segments

def stitch(pieces, bounds):
    """One log spectrogram from its segments' (F, length): magnitudes cross-faded where
    segments overlap, so that neither level nor spectrum jumps at a seam. The clip ends
    where the last given segment ends."""
    if len(pieces) == 1:
        return pieces[0]
    total = np.zeros((pieces[0].shape[0], bounds[-1][1]))
    for piece, (start, stop), weight in zip(pieces, bounds, utils.crossfade_weights(bounds)):
        total[:, start:stop] += utils.magnitude(piece) * weight
    return np.log1p(total).astype(np.float32)


def joined_history(histories, shares):
    """One loss curve from its segments' curves: at each step, each segment's losses (held
    at their last value once its run has ended), weighted by its share of the clip's
    frames. For one segment, its own curve. histories: per segment, [(step, c, s)]."""
    if len(histories) == 1:
        return histories[0]
    steps = sorted({h[0] for history in histories for h in history})
    joined, at = [], [0] * len(histories)
    for step in steps:
        content = style = 0.0
        for k, history in enumerate(histories):
            while at[k] + 1 < len(history) and history[at[k] + 1][0] <= step:
                at[k] += 1
            content += shares[k] * float(history[at[k]][1])
            style += shares[k] * float(history[at[k]][2])
        joined.append((step, content, style))
    return joined


# ------------------------------------------------------------------------------ outputs

def check_invertible(generated):
    """Griffin-Lim needs a finite magnitude exp(S) - 1 in every bin of every clip. The
    last Adam step comes after the last loss was read, and can leave NaN, or values whose
    exp overflows, that no loss has shown: checked before anything is written."""
    for spec in generated:
        if spec is None:  # a clip Ctrl-C stopped before it began
            continue
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


def vocode(generated, content_audio, args, device, name="result"):
    """(samples,) float32 audio of the log spectrogram `generated` (F, T): Griffin-Lim (and
    -vocoder hifigan on its waveform), scaled below full scale if it would clip. As long
    as `content_audio` when it has the content's frames; a shorter `generated` (Ctrl-C
    inside a long clip) gives audio as long as the frames it has."""
    frames = generated.shape[1]
    length = (len(content_audio) if frames == utils.frame_count(len(content_audio))
              else (frames - 1) * utils.HOP)
    phase = None
    if args.phase == "content":  # made a chunk at a time, as Griffin-Lim asks for it
        phase = lambda start, stop: np.angle(utils.stft_frames(content_audio, start, stop))
    audio = utils.griffin_lim(generated, length, iters=args.griffin_lim_iters,
                              phase=phase, momentum=args.griffin_lim_momentum, seed=args.seed,
                              device=device)
    if not np.all(np.isfinite(audio)):  # float32 on the GPU overflows sooner than the check
        raise NonFiniteLoss(f"{name}: Griffin-Lim's result is not finite; the spectrogram "
                            f"reaches {np.max(generated):.4g}: lower -content_weight, "
                            f"-style_weight or -learning_rate")
    if args.vocoder == "hifigan":
        audio = vocoder.from_audio(audio, device)
    audio, gain = utils.fit_full_scale(audio)
    if gain < 1:  # the wav only: the spectrogram saved and pictured stays as optimised
        log(f"{name}: Griffin-Lim's peak {utils.FULL_SCALE / gain:.3g} passes full scale: "
            f"scaled by {20 * math.log10(gain):.1f} dB so that it does not clip")
    return audio


def write_outputs(out_dir, name, audio, content_spec, style_spec, generated, runs, index,
                  args, written=None):
    """Everything one clip's result is written as; each file appears whole or not at all,
    and is added to `written` as soon as it is there. Returns output_paths().

    audio: vocode()'s; runs: (seed, curves) per random CNN, as optimise_ensemble() gives,
    curves[index] this clip's; the loss picture has the curves of each.
    """
    paths = output_paths(out_dir, name, args)
    wav, spectrograms, loss = paths[:3]
    done = written if written is not None else []
    utils.save_wav(wav, audio)
    done.append(wav)
    utils.plot_spectrograms([("content", content_spec), ("style", style_spec),
                             ("generated", generated)], spectrograms)
    done.append(spectrograms)
    curves = {}
    for seed, clip_curves in runs:
        points = clip_curves[index]  # empty with -epochs 0
        steps, content, style = (list(x) for x in zip(*points)) if points else ([], [], [])
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


def f0_ratios(flag, contents, style):
    """Per content clip, the style's median F0 over that clip's (the style's measured
    once), for `flag` (-pitch_ratio or -formant_ratio) set to auto."""
    f0_style = utils.median_f0(style)
    if f0_style is None:
        raise UsageError(f"{flag} auto: no voiced frames in the style clip to measure "
                         "its pitch; give a number")
    ratios = []
    for y in contents:
        f0_content = utils.median_f0(y)
        if f0_content is None:
            raise UsageError(f"{flag} auto: no voiced frames in the content clip to "
                             "measure its pitch; give a number")
        log(f"{flag} auto: style {f0_style:.0f} Hz / content {f0_content:.0f} Hz = "
            f"{f0_style / f0_content:.3f}")
        ratios.append(f0_style / f0_content)
    return ratios


def reshaping_ratios(args, contents, style):
    """Per content clip, the (pitch, formant) factors -pitch_ratio and -formant_ratio
    ask for: numbers as given; 'auto' from the median F0s (f0_ratios, measured once for
    both)."""
    autos = [flag for flag in ("pitch_ratio", "formant_ratio") if getattr(args, flag) == "auto"]
    f0 = f0_ratios("-" + autos[0], contents, style) if autos else None
    pitch = f0 if args.pitch_ratio == "auto" else [args.pitch_ratio] * len(contents)
    if args.formant_ratio == "auto":
        low, high = FORMANT_RANGE
        formant = [min(max(r ** FORMANT_PER_PITCH, low), high) for r in f0]
        for r in formant:
            log(f"-formant_ratio auto: {r:.3f}")
    else:
        formant = [args.formant_ratio] * len(contents)
    return list(zip(pitch, formant))


def input_spectrograms(args, contents, style):
    """The content log spectrograms (reshaped by -pitch_ratio / -formant_ratio) and the
    style's."""
    if args.pitch_ratio != 1 or args.formant_ratio != 1:
        content_specs = [utils.shift_pitch_formants(y, pitch, formant) for y, (pitch, formant)
                         in zip(contents, reshaping_ratios(args, contents, style))]
    else:
        content_specs = [utils.log_spectrogram(y) for y in contents]
    return content_specs, utils.log_spectrogram(style)


def kernel_size(text):
    """'3x5' -> (3, 5)."""
    return tuple(int(k) for k in text.split("x"))


def make_transfer(args, content_specs, style, device, seed, **more):
    """The Transfer that `args` ask for, with the random CNN of `seed`; `more` passes
    Transfer's segment options (nets, whole_frames, shares, initial, first_step,
    stop_at_rounding)."""
    return Transfer(content_specs, style, device=device, seed=seed,
                    kernel=kernel_size(args.kernel),
                    style_kernel=kernel_size(args.style_kernel) if args.style_kernel else None,
                    channels=args.channels,
                    content_weight=args.content_weight, style_weight=args.style_weight,
                    learning_rate=args.learning_rate, optimizer=args.optimizer,
                    init=args.init, style_form=args.style_form,
                    normalize_gram=args.normalize_gram, **more)


def segment_plan(args, frames):
    """Per clip of `frames` frames, the (start, stop) of its segments: the whole clip with
    -exact or when it is at most WHOLE_WITHIN segments long, else -segment seconds each,
    overlapping by -overlap seconds."""
    length = max(2, round(args.segment * utils.SAMPLE_RATE / utils.HOP))
    overlap = min(round(args.overlap * utils.SAMPLE_RATE / utils.HOP), length // 2)
    return [[(0, n)] if args.exact or n <= WHOLE_WITHIN * length
            else utils.optimisation_segments(n, length, overlap) for n in frames]



def style_shares(content_specs, plans, style_net):
    """{(clip, start, stop): the part of the style's Gram that segment is to carry}.

    The style loss's gradient at a frame is proportional to the frame's own features, so
    in a clip optimised whole, quiet frames take little of the style and loud ones much.
    Each segment's share is therefore its content's feature energy (through the style
    network) over the whole clip's, not its frame count: a pause of its own does not get
    the style's full texture laid into it. Shares of overlapping segments add up to more
    than 1, as their frames are counted in each.
    """
    shares = {}
    for c, bounds in enumerate(plans):
        if len(bounds) == 1:
            continue
        energy = frame_energy(content_specs[c], style_net)
        total = energy.sum() + 1e-12
        for start, stop in bounds:  # a floor keeps a silent segment's share above 0
            shares[(c, start, stop)] = float(energy[start:stop].sum() / total) + 1e-6
    return shares


def style_targets(args, content_specs, style_frames):
    """Per content clip, the multiple of the style's Gram it is set against: the length
    the style counts as over its own. It counts as it is, or with -style_cap X as X times
    the clip's frame count where it is longer than that, and with -style_floor Y as Y
    times it where it is shorter. The reference's Grams are sums over frames: a clip that
    is to match a much longer style's can only grow louder (the long clips' section of
    EXPERIMENTS.md), and one much longer than the style is asked for little of the style
    in each frame. Scaled, the style's Gram is what a style of the length it counts as,
    with the same statistics, would have. With -normalize_gram lengths no longer count."""
    if args.normalize_gram:
        return [1.0] * len(content_specs)
    multiples = []
    for spec in content_specs:
        counted = float(style_frames)
        if args.style_cap:
            counted = min(counted, args.style_cap * spec.shape[1])
        counted = max(counted, args.style_floor * spec.shape[1])
        multiples.append(counted / style_frames)
    return multiples


def frame_energy(spec, net):
    """(T,) squared norm of each frame's features through `net`."""
    return torch.cat([features.double().pow(2).sum(dim=(0, 1, 2)).cpu()
                      for features in features_in_blocks(spec, net)]).numpy()


def work_groups(args, items):
    """The order in which segments are optimised, as groups optimised as one batch.

    L-BFGS: one segment at a time, since a batch would share its line search, history
    and budget (each segment then ends where it would alone). Adam steps each entry on
    its own gradient alone, so its segments go in batches as large as memory allows."""
    if args.optimizer == "lbfgs":
        return [[item] for item in items]
    longest = max(stop - start for _, start, stop in items)
    per_item = 4 * 12 * args.channels * (utils.N_FFT // 2 - 1) * longest  # ~12 float maps
    size = max(1, ADAM_BATCH_BYTES // per_item)
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_random_cnn(args, content_specs, style_spec, device, seed, progress=True):
    """Every content clip optimised, segment by segment, through the random CNN of `seed`.

    Returns (generated, curves, why): per clip its log spectrogram, the segments
    stitched (None for a clip Ctrl-C stopped before it began; cut short at the last
    segment reached for one it stopped inside), and its loss curve [(step, content,
    style)], the segments' curves weighted by their shares; why says how it stopped.

    A clip of several segments is optimised -passes times. The first pass gives each
    segment its share of the style's Gram. Each later pass starts every segment where the
    last one left it and sets it against the whole clip's residual: its own Gram, less the
    stitched clip's, plus the style's (StyleGram.corrected), so that each segment pulls
    toward the whole clip's optimum rather than toward its share alone.
    """
    nets = networks(seed, kernel_size(args.kernel),
                    kernel_size(args.style_kernel) if args.style_kernel else None,
                    args.channels, device)
    rank = None if args.exact or args.style_rank == "full" else args.style_rank
    gram = style_statistics(style_spec, nets[1], rank, device)
    if args.init == "content":
        starts = content_specs
    else:  # the reference's noise, drawn for each whole clip as its own run would
        starts = [nets[0].initial_noise(spec.shape).numpy() for spec in content_specs]
    plans = segment_plan(args, [spec.shape[1] for spec in content_specs])
    items = [(c, start, stop) for c, bounds in enumerate(plans) for start, stop in bounds]
    shares = style_shares(content_specs, plans, nets[1])
    targets = style_targets(args, content_specs, gram.frames)  # per clip
    refined = [item for item in items if len(plans[item[0]]) > 1]
    passes = args.passes if refined and gram.factor is not None else 1
    # a first pass that a later one refines is only its start: it stops sooner (at a looser
    # -tol, and at the first line search that the loss's rounding defeats), against the
    # style's top FIRST_PASS_RANK directions only, which cost less per evaluation
    first_gram = gram.cut(FIRST_PASS_RANK) if passes > 1 else gram
    bar = progress_bar((len(items) + (passes - 1) * len(refined)) * args.epochs, progress)
    # printed lines for a clip optimised whole; segments show on the progress bar only
    print_every = args.print_interval if len(items) == 1 else args.epochs + 1
    results, histories, stops, why = {}, {}, collections.Counter(), None
    # Per pass, the step the first line search of its latest segment took, which the next
    # segment tries first: segments of a clip are alike, and from the short gradient step
    # a fresh L-BFGS spent 13-18 evaluations growing its first step from the noise start.
    first_steps = {}
    evaluations, begun, ran = 0, time.perf_counter(), 0

    def optimise_group(group, style, initial, tol=args.tol, stage=None, window=args.tol_window,
                       rough=False, group_targets=None):
        # group_targets: the multiples of `style` its clips are set against (style_targets);
        # a later pass's target has the style's multiple in it already
        nonlocal evaluations, why, ran
        t = make_transfer(args, [content_specs[c][:, a:b] for c, a, b in group], style,
                          device, seed, nets=nets,
                          whole_frames=[content_specs[c].shape[1] for c, _, _ in group],
                          shares=[shares.get(item, 1.0) for item in group],
                          targets=group_targets,
                          initial=initial, first_step=first_steps.get(stage),
                          stop_at_rounding=rough)
        if evaluations == 0:
            log(f"{len(content_specs)} content clip(s) {[s.shape[1] for s in content_specs]}"
                f" frames in {len(items)} segment(s), style {style_spec.shape[1]} frames "
                f"(rank {gram.rank}), on {device}, style loss in {t.style_loss.form} form")
        history, done, seconds, why = optimise(
            t, args.epochs, print_every, args.plot_interval, tol, window,
            progress, bar, offset=ran * args.epochs, quiet=len(items) > 1)
        evaluations, ran = evaluations + done, ran + len(group)
        if stage and getattr(t.optimizer, "first_taken", None):
            first_steps[stage] = t.optimizer.first_taken
        for j, item in enumerate(group):
            results[item] = t.result()[j]
            after = histories[item][-1][0] if histories.get(item) else 0
            histories.setdefault(item, []).extend(
                (after + h[0], h[1][j], h[2][j]) for h in history)
        stops[why.split(":")[0]] += len(group)
        return not why.startswith("interrupted")

    try:
        for group in work_groups(args, items):
            segmented = all(len(plans[c]) > 1 for c, _, _ in group)
            looser = passes > 1 and segmented
            if not optimise_group(group, first_gram if looser else gram,
                                  [starts[c][:, a:b] for c, a, b in group],
                                  args.tol * FIRST_PASS_TOL if looser else args.tol,
                                  "first" if segmented else None, rough=looser,
                                  group_targets=[targets[c] for c, _, _ in group]):
                break
        else:
            later = functools.partial(optimise_group, tol=args.tol * REFINE_WINDOW,
                                      window=max(1, round(args.tol_window * REFINE_WINDOW)))
            for _ in range(passes - 1):
                if not refine(content_specs, plans, results, shares, gram, targets,
                              nets[1], rank, device, later):
                    break
    except KeyboardInterrupt:  # while a segment was being set up
        why = "interrupted (Ctrl-C): writing what the finished segments reached"
    finally:  # an error too: a bar left open would offset every later one
        bar.close()
    if evaluations:
        seconds = time.perf_counter() - begun
        log(f"{evaluations} iterations in {seconds:.1f} s "
            f"({1000 * seconds / evaluations:.2f} ms each)")
    if len(items) > 1 and results:
        log(f"{len(results)} of {len(items)} segments optimised"
            + (f", {passes} passes" if passes > 1 else "") + ": "
            + ", ".join(f"{n} {reason}" for reason, n in stops.items()))
    generated, curves = [], []
    for c, bounds in enumerate(plans):
        reached = [bound for bound in bounds if (c, *bound) in results]
        if not reached:
            generated.append(None)
            curves.append([])
            continue
        generated.append(stitch([results[(c, *bound)] for bound in reached], reached))
        weights = [w.sum() / reached[-1][1] for w in utils.crossfade_weights(reached)]
        curves.append(joined_history([histories[(c, *bound)] for bound in reached], weights))
    return generated, curves, why or "nothing to optimise"


def refine(content_specs, plans, results, shares, gram, targets, style_net, rank, device,
           optimise_group):
    """One more pass over the clips of several segments, each segment against the
    residual of its whole clip as stitched now, with `targets` times the style's Gram
    (style_targets). Returns False if Ctrl-C stopped it."""
    for c, bounds in enumerate(plans):
        if len(bounds) == 1:
            continue
        clip = stitch([results[(c, *bound)] for bound in bounds], bounds)
        # the stitched clip's Gram, as a factor of the style's rank (of 2 x the default
        # for an exact style, whose rank would grow with the clip)
        whole = style_statistics(clip, style_net, rank or 2 * STYLE_RANK, device)
        # the style's part of the residual is what style_targets scales, not the clip's
        style = gram if targets[c] == 1 else gram.scaled(targets[c])
        for bound in bounds:
            item = (c, *bound)
            with torch.no_grad():
                own = style_net(torch.as_tensor(results[item]).to(device)[None])
            own = own.flatten(1, 2)[0] / shares[item] ** 0.5
            target = style.corrected(own, whole, REFINE_RANK)
            if not optimise_group([item], target, [results[item]], stage="refine"):
                return False
    return True


def average_magnitudes(log_specs):
    """One log1p spectrogram whose magnitude is the mean of theirs.

    Each random CNN leaves texture of its own on top of what all of them agree on; the
    mean keeps the shared part and thins the rest. Magnitudes, not logs, are averaged:
    measured, that kept more of the style (see EXPERIMENTS.md).
    """
    if len(log_specs) == 1:  # one run: its own spectrogram, bit for bit
        return log_specs[0]
    return np.log1p(np.mean([np.expm1(s) for s in log_specs], axis=0)).astype(np.float32)


def optimise_ensemble(args, content_specs, style_spec, device, progress=True):
    """The whole optimisation `args` ask for, on the content clips' log spectrograms (F, T)
    and the style's: -ensemble runs, one after another, each with its own random CNN.

    Returns (generated, runs, why): generated holds one log spectrogram per content clip
    (the ensemble's average, then -follow_loudness: what Griffin-Lim will invert; None for
    a clip Ctrl-C stopped before it began, shorter than the clip for one it stopped
    inside); runs one (seed, curves) per random CNN that ran, curves holding each clip's
    [(step, content, style)]; why says how the last one stopped. Ctrl-C keeps the random
    CNNs that finished; only when none did, what the interrupted one reached.
    """
    longer = style_spec.shape[1] / min(spec.shape[1] for spec in content_specs)
    multiples = style_targets(args, content_specs, style_spec.shape[1])
    if min(multiples) < 1:
        log(f"-style_cap {args.style_cap:g}: the style ({style_spec.shape[1]} frames) "
            f"counts as {args.style_cap:g} times as long as the content, its Gram scaled "
            f"down to that")
        longer = args.style_cap  # for the shortest clip, which the cap scales most
    if max(multiples) > 1:
        log(f"-style_floor {args.style_floor:g}: the style ({style_spec.shape[1]} frames) "
            f"counts as {args.style_floor:g} times as long as the content, its Gram scaled "
            f"up {max(multiples):.2f} times for the longest clip")
    if longer > LONGER_STYLE and not args.normalize_gram:
        # the reference's Grams are sums over frames, not means: a shorter clip can only
        # match a longer style's by growing louder, and far enough it overflows
        log(f"the style is {longer:.1f} times as long as the content: the reference's "
            f"objective then asks for a result about {longer ** 0.5:.1f} times as loud in "
            f"its features, which can run out of range; -style_cap {LONGER_STYLE} counts it "
            f"as {LONGER_STYLE} times as long, -normalize_gram compares Grams per frame")
    results, runs = [], []
    for seed in range(args.seed, args.seed + args.ensemble):
        if args.ensemble > 1:
            log(f"random CNN {seed - args.seed + 1} of {args.ensemble}: seed {seed}")
        generated, curves, why = run_random_cnn(args, content_specs, style_spec, device,
                                                seed, progress)
        interrupted = why.startswith("interrupted")
        if not interrupted or not results:
            if any(g is not None for g in generated):
                results.append(generated)
                runs.append((seed, curves))
        if interrupted:
            if results and seed != args.seed:  # half a run would weigh as much as a whole
                log(f"random CNN {seed - args.seed + 1} was cut short: left out, the "
                    f"average is of the {len(results)} that finished")
            break
    generated = [None if any(r[i] is None for r in results) or not results
                 else average_magnitudes([r[i] for r in results])
                 for i in range(len(content_specs))]
    if args.follow_loudness:
        generated = [g if g is None else
                     utils.follow_loudness(g, c[:, :g.shape[1]], args.follow_loudness)
                     for g, c in zip(generated, content_specs)]
    return generated, runs, why


# ------------------------------------------------------------------------------ memory

def memory_needed(args, content_samples, style_samples):
    """Peak bytes a run is expected to need, from the clips' lengths (samples at 22050 Hz)
    and the settings; what lets a run that cannot fit be refused before any work.

    Grows with the clips only through the audio and its spectrograms (about 50 bytes a
    sample for a content clip, 12 for the style); the optimisation, the style's Gram,
    Griffin-Lim and HiFi-GAN work on pieces of bounded size, except with -exact, whose
    whole-clip features grow with the content's length (and -style_rank full, whose Gram
    is fixed but large).
    """
    rows = args.channels * (utils.N_FFT // 2 - 1)
    floats_per_frame = 12  # feature maps a loss evaluation keeps for its gradient
    content_frames = [utils.frame_count(n) for n in content_samples]
    style_frames = utils.frame_count(style_samples)
    plans = segment_plan(args, content_frames)
    items = [(0, a, b) for bounds in plans for a, b in bounds]
    group = max(len(g) for g in work_groups(args, items))
    longest = max(b - a for _, a, b in items)
    rank = None if args.exact or args.style_rank == "full" else args.style_rank
    needed = BASE_BYTES + 50 * sum(content_samples) * args.ensemble + 12 * style_samples
    needed += 4 * rows * longest * floats_per_frame * group  # one batch of segments
    if style_frames <= STYLE_BLOCK:
        needed += 4 * rows * style_frames * 2 + 8 * style_frames ** 2 * 3
    else:
        needed += 4 * rows * STYLE_BLOCK * 2 + 4 * rows * 4 * max(2 * (rank or 0), 256)
    if rank is None and style_frames > STYLE_BLOCK or longest + min(
            rank or style_frames, style_frames) >= rows:  # the Gram form: N x N matrices
        needed += 4 * rows ** 2 * 3
    chunk = min(max(content_frames), utils.GRIFFIN_LIM_CHUNK)
    needed += 16 * 6 * (utils.N_FFT // 2 + 1) * chunk
    if args.vocoder == "hifigan":  # its weights and one block's activations, whatever the length
        needed += vocoder.BLOCK_BYTES
    return needed


def available_memory():
    """Bytes the system can still give (MemAvailable), or None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(args, contents, style):
    """Refuse, in one line, a run whose estimated peak memory is over -max_memory (by
    default what the system has available)."""
    limit = args.max_memory * 2 ** 30 if args.max_memory else available_memory()
    needed = memory_needed(args, [len(y) for y in contents], len(style))
    if limit is not None and needed > limit:
        longest = max(len(y) for y in contents) / utils.SAMPLE_RATE
        hint = ("; drop -exact to optimise in segments" if args.exact else
                "; a smaller -segment or -style_rank needs less")
        raise UsageError(f"a {longest:.0f} s content clip against a "
                         f"{len(style) / utils.SAMPLE_RATE:.0f} s style needs about "
                         f"{needed / 2 ** 30:.1f} GB of memory, more than the "
                         f"{limit / 2 ** 30:.1f} GB {'allowed' if args.max_memory else 'available'}"
                         f"{hint}")
    return needed


DEFAULT_EPOCHS = {"adam": 20000, "lbfgs": 300}
DEFAULT_TOL = {"adam": 0, "lbfgs": 0.003}


def settle_defaults(args):
    """The defaults that follow other flags: the budget and the stopping rule follow the
    optimiser, the print and plot intervals follow the budget."""
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.optimizer]
    if args.tol is None:
        args.tol = DEFAULT_TOL[args.optimizer]
    args.print_interval = args.print_interval or max(1, args.epochs // 10)
    args.plot_interval = args.plot_interval or max(1, args.epochs // 200)


# ------------------------------------------------------------------------------ the Python API

@dataclasses.dataclass(eq=False)  # arrays have no one truth value to compare by
class Result:
    """One content clip's transfer, as VoiceTransfer.transfer returns it.

    audio: (samples,) float32 at `sample_rate`, as long as the content, within full scale
    spectrogram: (F, T) log(1 + |STFT|) the vocoder turned into `audio`: F = 257 bins
        (utils.N_FFT // 2 + 1), T frames of utils.HOP samples (fewer than the content's
        if Ctrl-C stopped it inside the clip)
    content_spectrogram (F, T), style_spectrogram (F, Ts): what it was optimised against
    history: [(seed, [(iteration, content loss, style loss), ...])], one per random CNN
    why: how the (last) optimisation stopped, e.g. "converged: ..." or "interrupted ..."
    settings: every option, defaults resolved (an argparse.Namespace, as the flags give)
    seconds: wall time from loading the clips to this result's audio
    content, style: the clips' paths, or None where they were given as arrays
    """
    audio: np.ndarray = dataclasses.field(repr=False)  # the repr says what it is, briefly
    spectrogram: np.ndarray = dataclasses.field(repr=False)
    content_spectrogram: np.ndarray = dataclasses.field(repr=False)
    style_spectrogram: np.ndarray = dataclasses.field(repr=False)
    history: list = dataclasses.field(repr=False)
    why: str
    settings: argparse.Namespace = dataclasses.field(repr=False)
    seconds: float
    content: str = None
    style: str = None
    device: str = "cpu"
    sample_rate: int = utils.SAMPLE_RATE

    def save(self, path, written=None):
        """Write the audio to `path` as a wav (its extension made .wav) and beside it what
        train.py writes with it: the spectrogram and loss pictures and the record
        <name>.json. Each file appears whole or not at all, added to `written` as it does.
        Returns the paths."""
        out_dir, name = os.path.split(os.path.splitext(path)[0])
        runs = [(seed, [points]) for seed, points in self.history]
        written = written if written is not None else []
        with utils.output_dir(out_dir or ".", planned_outputs(out_dir, name, self.settings)):
            paths = write_outputs(out_dir, name, self.audio, self.content_spectrogram,
                                  self.style_spectrogram, self.spectrogram, runs, 0,
                                  self.settings, written)
            # from Python the settings hold no clips: the record's rerun names this one's
            clips = {"content": [self.content] if self.content else None, "style": self.style}
            settings = argparse.Namespace(**{**clips, **{k: v for k, v in vars(
                self.settings).items() if v is not None or k not in clips}})
            written.append(report.write_record(paths[0], report.run_record(
                settings, self.content, runs, 0, self.why, self.device, self.seconds)))
        return paths + written[-1:]


class VoiceTransfer:
    """The transfer as one object, its methods the pipeline's stages:

        vt = VoiceTransfer(style_weight=2)          # any of train.py's flags, without the dash
        result = vt.transfer("input/male.wav", "input/female.wav")
        result.save("output/male_as_female.wav")    # the wav, its pictures and record

    load -> spectrograms -> optimise -> vocode; transfer() runs them all. An option is
    checked as its flag is; a wrong one is a UsageError naming the flag.
    """

    def __init__(self, preset=None, **options):
        self.use(parse_options(preset, options))

    @classmethod
    def from_settings(cls, settings):
        """The object for a parsed command line (train.py's or sweep.py's namespace)."""
        vt = cls.__new__(cls)
        vt.use(settings)
        return vt

    def use(self, settings):
        """Run with `settings`, a namespace of train.py's flags, its defaults settled."""
        settle_defaults(settings)
        check_seeds([settings.seed], settings.ensemble)
        if 0 < settings.style_cap < settings.style_floor:
            raise UsageError(f"-style_floor {settings.style_floor:g} is above -style_cap "
                             f"{settings.style_cap:g}: the style cannot count as longer than "
                             f"its cap")
        self.settings, self.device = settings, pick_device(settings.device)

    def load(self, audio):
        """(samples,) float32 mono at utils.SAMPLE_RATE (22050 Hz) from a path (any format
        libsndfile reads), an array at 22050 Hz ((samples,), or 2-D with channels along the
        shorter axis), or an (array, sample_rate) pair."""
        if isinstance(audio, (str, os.PathLike)):
            return utils.load_audio(os.fspath(audio))
        samples, rate = audio if isinstance(audio, tuple) else (audio, utils.SAMPLE_RATE)
        return utils.prepare_audio(samples, rate, "audio array")

    def spectrograms(self, contents, style):
        """Per content clip (samples,) its (F, T) log spectrogram, reshaped by -pitch_ratio
        and -formant_ratio, and the style's (F, Ts): ([arrays], array)."""
        return input_spectrograms(self.settings, contents, style)

    def optimise(self, content_specs, style_spec, progress=True):
        """The -ensemble random CNNs' optimisation (F, T) per content clip: (generated,
        runs, why) as optimise_ensemble() returns them."""
        return optimise_ensemble(self.settings, content_specs, style_spec, self.device,
                                 progress)

    def vocode(self, spectrogram, content_audio, name="result"):
        """(samples,) audio of the (F, T) `spectrogram`, as long as `content_audio`; `name`
        is what a note or error about it calls it."""
        return vocode(spectrogram, content_audio, self.settings, self.device, name)

    def transfer(self, content, style, progress=True):
        """Say `content` in the voice of `style`, each as load() takes it; `content` may be
        a list of clips, optimised as one batch. Returns a Result, or a list of Results
        (None for a clip Ctrl-C stopped before it began)."""
        started = time.perf_counter()
        several = isinstance(content, list)
        clips = content if several else [content]
        contents = [self.load(c) for c in clips]
        style_audio = self.load(style)
        check_memory(self.settings, contents, style_audio)
        results = self.results(clips, contents, style, style_audio, started, progress)
        return results if several else results[0]

    def results(self, clips, contents, style, style_audio, started, progress=True):
        """transfer() after loading: clips as given (paths are kept in the records),
        contents and style_audio as load() made them; `started` is when loading began."""
        with memory_reported(contents, style_audio, self.device):
            content_specs, style_spec = self.spectrograms(contents, style_audio)
            generated, runs, why = self.optimise(content_specs, style_spec, progress)
            check_invertible(generated)
            results = []
            for i, (clip, audio, spec) in enumerate(zip(clips, contents, generated)):
                if spec is None:
                    results.append(None)
                    continue
                path = os.fspath(clip) if isinstance(clip, (str, os.PathLike)) else None
                results.append(Result(
                    self.vocode(spec, audio, path or f"clip {i + 1}"), spec, content_specs[i],
                    style_spec,
                    [(seed, [(int(step), float(c), float(s)) for step, c, s in curves[i]])
                     for seed, curves in runs], why, self.settings,
                    time.perf_counter() - started, path,
                    os.fspath(style) if isinstance(style, (str, os.PathLike)) else None,
                    str(self.device)))
        return results


API_ONLY = {"content", "style", "output", "preset"}  # given to transfer()/save() instead


def parse_options(preset, options):
    """The namespace of train.py's flags for Python keyword options: each passes through
    its flag's own parsing, so a value is checked, and refused, as on the command line."""
    parser = build_parser()
    parser.raising = True
    known = {a.dest: a for a in parser._actions}
    argv, switches = ["-preset", preset] if preset else [], {}
    for key, value in options.items():
        if key not in known or key in API_ONLY:
            raise UsageError(f"{key}: not an option; they are train.py's flags without "
                             f"the dash: {', '.join(sorted(set(known) - API_ONLY - {'help'}))}")
        if isinstance(known[key], argparse._StoreTrueAction):
            switches[key] = bool(value)
        elif value is not None:
            argv += [f"-{key}", repr(value) if isinstance(value, float) else str(value)]
    settings = parser.parse_args(argv)
    vars(settings).update(switches)  # False too, over a preset's True
    settings.content = settings.style = None  # the clips come with transfer()
    return settings


# ------------------------------------------------------------------------------ command line run

def run(args):
    vt = VoiceTransfer.from_settings(args)
    started = time.perf_counter()  # the record's wall time: loading to writing
    files = content_paths(args.content)
    contents = [vt.load(f) for f in files]  # every input is checked before any work
    style = vt.load(args.style)
    check_memory(args, contents, style)
    names = output_names(files, args.style)
    planned = [p for name in names for p in planned_outputs(args.output, name, args)]
    if several_results(names, args):
        planned.append(os.path.join(args.output, report.PAGE))
    written, why = [], "done"
    # the output is checked now, not after the work
    with utils.output_dir(args.output, planned):
        try:
            results = vt.results(files, contents, args.style, style, started)
            for path, name, result in zip(files, names, results):
                if result is None:
                    log(f"{path}: not reached before Ctrl-C, nothing written")
                    continue
                why = result.why
                result.save(os.path.join(args.output, name + ".wav"), written)
            if several_results(names, args):  # to compare by ear
                written.append(report.write_page(
                    args.output, [os.path.join(args.output, n + ".wav")
                                  for n, r in zip(names, results) if r is not None]))
        finally:  # on a failure or a second Ctrl-C too: what is there, whole, is listed
            for path in written:
                print(path)
    return 130 if why.startswith("interrupted") else 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return guarded("train.py", lambda: run(args), (utils.AudioError,))


if __name__ == "__main__":
    sys.exit(main())
