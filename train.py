"""Voice style transfer with a fixed random CNN.

    python train.py -content a.wav -style b.wav

Optimises a log spectrogram so that a random, never-trained 2-D CNN sees in it the
features of the content clip and the time-axis Gram (the "texture") of the style
clip, then turns it back into sound with Griffin-Lim. With no arguments it transfers
the example voices in input/. Writes into output/ (or -output):
    <content>_as_<style>.wav               the generated speech, at the content's duration
    <content>_as_<style>_spectrograms.png  content, style and generated spectrograms
    <content>_as_<style>_loss.png          the loss curves
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import utils
from model import RandomCNN, StyleLoss, content_loss

HERE = os.path.dirname(os.path.abspath(__file__))
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")


class UsageError(Exception):
    """A setting the user gave that cannot work; reported as one line."""


# ------------------------------------------------------------------------------ command line

class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the whole usage; one line says enough
        self.exit(2, f"{self.prog}: error: {message} (see -h)\n")


def number(kind, low, low_ok=True):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not low_ok):
            bound = f">= {low}" if low_ok else f"> {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def build_parser():
    p = OneLineParser(prog="train.py", description=__doc__.split("\n\n")[1],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-content", nargs="+", default=[os.path.join(HERE, "input", "male.wav")],
                   help="content clip(s) or folder(s) of clips; several are optimised as one batch")
    p.add_argument("-style", default=os.path.join(HERE, "input", "female.wav"),
                   help="style clip")
    p.add_argument("-output", default="output", help="folder for the results")
    p.add_argument("-content_weight", type=number(float, 0), default=100.0)
    p.add_argument("-style_weight", type=number(float, 0), default=1.0)
    p.add_argument("-epochs", type=number(int, 0), default=20000, help="optimiser iterations")
    p.add_argument("-learning_rate", type=number(float, 0, low_ok=False), default=0.001)
    p.add_argument("-print_interval", type=number(int, 1), default=1000,
                   help="print the losses every this many iterations")
    p.add_argument("-plot_interval", type=number(int, 1), default=100,
                   help="record a point of the loss curve every this many iterations")
    p.add_argument("-seed", type=int, default=0,
                   help="random CNN weights, initial spectrogram and Griffin-Lim phase")
    p.add_argument("-device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("-kernel", choices=["3x1", "3x3"], default="3x1",
                   help="frequency x time size of the convolution kernel")
    p.add_argument("-griffin_lim_iters", type=number(int, 1), default=50)
    p.add_argument("-style_form", choices=["auto", "time", "gram"], default="auto",
                   help="exact form of the style loss: T x T products, 8160 x 8160 Grams, "
                        "or whichever is cheaper for the clips")
    p.add_argument("-normalize_gram", action="store_true",
                   help="divide each Gram by its clip's frame count (the reference does not)")
    p.add_argument("-save_spectrogram", action="store_true",
                   help="also save the optimised log spectrogram as <name>_spectrogram.npy")
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
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("-device cuda: no CUDA device is available "
                         "(check the driver and CUDA_VISIBLE_DEVICES)")
    return torch.device(name)


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

    def __init__(self, content_specs, style_spec, *, device, seed=0, kernel=(3, 1),
                 content_weight=100.0, style_weight=1.0, learning_rate=1e-3,
                 style_form="auto", normalize_gram=False):
        self.device = device
        self.frames = [spec.shape[1] for spec in content_specs]
        bins, longest = content_specs[0].shape[0], max(self.frames)
        self.net = RandomCNN(seed, kernel=kernel).to(device)
        self.content_weight, self.style_weight = content_weight, style_weight

        frames = torch.tensor(self.frames, device=device)
        self.mask = (torch.arange(longest, device=device) < frames[:, None]).float()[:, None]
        self.padded = len(set(self.frames)) > 1
        self.frame_counts = frames.float() if self.padded else None

        def padded(spec):
            return torch.nn.functional.pad(torch.as_tensor(spec), (0, longest - spec.shape[1]))

        content = torch.stack([padded(s) for s in content_specs]).to(device)
        noise = [self.net.initial_noise((bins, n)) for n in self.frames]
        self.spec = torch.nn.Parameter(torch.stack([padded(n) for n in noise]).to(device))
        with torch.no_grad():
            self.content_features = self.features(content)
            style_features = self.net(torch.as_tensor(style_spec, device=device)[None])
        self.style_loss = StyleLoss(style_features, longest, form=style_form,
                                    normalize=normalize_gram).to(device)
        self.optimizer = torch.optim.Adam([self.spec], lr=learning_rate,
                                          capturable=device.type == "cuda")

    def features(self, spec):
        if not self.padded:
            return self.net(spec)
        # Masking the input too keeps a 3x3 kernel from reading a neighbour's padding.
        return self.net(spec * self.mask) * self.mask[:, None]

    def losses(self):
        """Weighted content and style losses of each clip, shape (B,) each."""
        features = self.features(self.spec)
        content = content_loss(features, self.content_features, self.frame_counts)
        style = self.style_loss(features, self.frame_counts)
        return self.content_weight * content, self.style_weight * style

    def step(self):
        self.optimizer.zero_grad(set_to_none=True)
        content, style = self.losses()
        (content + style).sum().backward()
        self.optimizer.step()
        return content.detach(), style.detach()

    def result(self):
        """The generated log spectrograms, each cut back to its clip's length."""
        spec = self.spec.detach().cpu().numpy()
        return [spec[i, :, :n] for i, n in enumerate(self.frames)]


def graphed(step):
    """Record one call of `step` (forward, backward, Adam) as a CUDA graph.

    Each iteration is then one graph launch instead of some twenty kernel launches
    driven from Python, which is what dominates a step this small. Returns a function
    that replays it and yields the same outputs, and the warm-up's outputs: the warm-up
    is a real iteration.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        first = step()  # allocates Adam's state and autograd's buffers outside the graph
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()

    def replay():
        graph.replay()
        return static
    return replay, first


def optimise(transfer, epochs, print_interval=1000, plot_interval=100, progress=True):
    """Run `epochs` iterations; Ctrl-C stops early. Returns (history, steps_done, seconds).

    history: list of (step, content (B,), style (B,)) at step 1, every plot_interval and
    the last step done.
    """
    history, done, bar = [], 0, None
    on_gpu = transfer.device.type == "cuda"
    refresh = 100 if on_gpu else 10  # reading a loss makes the GPU wait; do it seldom
    start = time.perf_counter()
    step = transfer.step
    try:
        bar = tqdm(total=epochs, disable=not progress, unit="it", dynamic_ncols=True,
                   desc="transfer", file=sys.stderr)
        for i in range(1, epochs + 1):
            if on_gpu and i == 1 and epochs > 1:
                try:
                    step, losses = graphed(transfer.step)
                except Exception as e:  # a driver or op that cannot be captured: run eagerly
                    log(f"CUDA graph capture failed ({e}); running eagerly")
                    step, losses = transfer.step, transfer.step()
            else:
                losses = step()
            done = i
            if i == 1 or i % plot_interval == 0 or i == epochs:
                history.append((i, *(loss.cpu().numpy().copy() for loss in losses)))
            if i % refresh == 0 or i == epochs or i % print_interval == 0:
                content, style = (float(loss.sum()) for loss in losses)
                bar.set_postfix(content=f"{content:.4g}", style=f"{style:.4g}",
                                total=f"{content + style:.4g}", refresh=False)
                bar.update(i - bar.n)
                if i % print_interval == 0:
                    log(f"step {i}: content {content:.4f}  style {style:.4f}  "
                        f"total {content + style:.4f}")
    except KeyboardInterrupt:
        if on_gpu:
            torch.cuda.synchronize()
        if history and history[-1][0] != done and done > 0:
            history.append((done, *(loss.cpu().numpy().copy() for loss in losses)))
        log(f"interrupted at step {done}: writing what the spectrogram has reached")
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return history, done, seconds


# ------------------------------------------------------------------------------ outputs

def write_outputs(out_dir, name, content_spec, style_spec, generated, n_samples, history,
                  index, args, device):
    """Everything one clip's run produces; each file appears whole or not at all."""
    base = os.path.join(out_dir, name)
    audio = utils.griffin_lim(generated, n_samples, iters=args.griffin_lim_iters,
                              seed=args.seed, device=device)
    utils.save_wav(base + ".wav", audio)
    utils.plot_spectrograms([("content", content_spec), ("style", style_spec),
                             ("generated", generated)], base + "_spectrograms.png")
    steps = [h[0] for h in history]
    content = [float(h[1][index]) for h in history]
    style = [float(h[2][index]) for h in history]
    curves = {"content": list(zip(steps, content)), "style": list(zip(steps, style)),
              "total": list(zip(steps, np.add(content, style)))}
    utils.plot_losses(curves, base + "_loss.png", title=name)
    if args.save_spectrogram:
        utils.atomic_write(base + "_spectrogram.npy", lambda tmp: np.save(tmp, generated))
    return [base + ".wav", base + "_spectrograms.png", base + "_loss.png"]


def run(args):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    files = content_paths(args.content)
    contents = [utils.load_audio(f) for f in files]  # every input is checked before any work
    style = utils.load_audio(args.style)
    utils.check_writable_dir(args.output)
    names = output_names(files, args.style)

    content_specs = [utils.log_spectrogram(y) for y in contents]
    style_spec = utils.log_spectrogram(style)
    kernel = tuple(int(k) for k in args.kernel.split("x"))
    transfer = Transfer(content_specs, style_spec, device=device, seed=args.seed, kernel=kernel,
                        content_weight=args.content_weight, style_weight=args.style_weight,
                        learning_rate=args.learning_rate, style_form=args.style_form,
                        normalize_gram=args.normalize_gram)
    log(f"{len(files)} content clip(s) {transfer.frames} frames, style {style_spec.shape[1]} "
        f"frames, on {device}, style loss in {transfer.style_loss.form} form")
    history, done, seconds = optimise(transfer, args.epochs, args.print_interval,
                                      args.plot_interval)
    if done:
        log(f"{done} iterations in {seconds:.1f} s ({1000 * seconds / done:.2f} ms each)")
    written = []
    for i, generated in enumerate(transfer.result()):
        written += write_outputs(args.output, names[i], content_specs[i], style_spec, generated,
                                 len(contents[i]), history, i, args, device)
    for path in written:
        print(path)
    return 130 if done < args.epochs else 0


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
