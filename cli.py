"""The command-line helpers every script shares: one-line errors, checked numbers, seeds,
the device, progress notes."""
import argparse
import math
import sys

import torch
from tqdm import tqdm


class UsageError(Exception):
    """A setting the user gave that cannot work; reported as one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in one line. `raising` (the Python API): a UsageError
    instead of printing and exiting, as a notebook cannot be exited."""
    raising = False

    def error(self, message):  # argparse prints the whole usage; one line says enough
        if self.raising:
            raise UsageError(message)
        self.exit(2, f"{self.prog}: error: {message} (see -h)\n")


def number(kind, low, low_ok=True, high=None):
    """An argparse type: a `kind` (int or float) >= `low` (> with low_ok False), <= high."""
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


def pick_device(name):
    """'auto', 'cpu' or 'cuda' as a torch.device; CUDA set up to compute as the CPU does."""
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


def guarded(prog, work, errors=()):
    """work()'s exit status, the way every script ends: a UsageError or one of `errors` is
    one line on stderr and status 2, Ctrl-C one line and 130, never a traceback."""
    try:
        return work()
    except (UsageError, *errors) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def log(message):
    """Progress notes go to stderr, above the progress bar; stdout lists the files written."""
    tqdm.write(message, file=sys.stderr)
