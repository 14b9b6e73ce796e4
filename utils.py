"""Audio I/O, the log-magnitude STFT, Griffin-Lim, and the pictures.

Everything here works on plain numpy arrays (or torch tensors for the GPU
Griffin-Lim) and knows nothing about the random CNN.
"""
import contextlib
import csv
import errno
import io
import math
import os
import tempfile

import librosa
import numpy as np
import soundfile as sf
import soxr
import torch

SAMPLE_RATE = 22050  # librosa.load's default, which the reference relies on
N_FFT = 512
HOP = N_FFT // 4  # librosa's default hop for n_fft=512
SILENCE_PEAK = 10 ** (-80 / 20)  # a clip whose loudest sample is below -80 dBFS is "silent"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class AudioError(Exception):
    """A problem with a file the user named; the message is one line that names it."""


class OutputError(AudioError):
    """An output file or folder that cannot be written; one line, as AudioError's."""


def cannot_write(path, error):
    """The one error line for a file that could not be written, with the system's reason
    (an OSError's strerror, e.g. 'No space left on device')."""
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return OutputError(f"{path}: cannot write ({reason})")


# ---------------------------------------------------------------------------- audio in / out

def load_audio(path, sr=SAMPLE_RATE, n_fft=N_FFT):
    """Read any libsndfile format (wav, flac, ogg, ...), mix to mono, resample to `sr`.

    Does what librosa.load(path) does (soundfile read, channel mean, soxr_hq
    resampling) but turns every way a file can be unusable into an AudioError.
    """
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        samples, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types for corrupt or foreign files
        # libsndfile says "Error opening '<path>': <reason>"; the path is named once already
        reason = (str(e).splitlines() or [type(e).__name__])[0].split("': ")[-1]
        raise AudioError(f"{path}: not a readable audio file ({reason})") from None
    return prepare_audio(samples, file_sr, path, sr, n_fft)


def prepare_audio(samples, rate, name, sr=SAMPLE_RATE, n_fft=N_FFT):
    """Samples at `rate` Hz, (samples,) or 2-D with channels along the shorter axis (as
    soundfile's (samples, channels) or torch's (channels, samples)) -> (samples,) float32
    mono at `sr`; an AudioError naming `name` for samples no transfer can use."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim > 2:
        raise AudioError(f"{name}: {samples.ndim}-D samples; give (samples,) or "
                         f"(samples, channels)")
    if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:
        samples = samples.T
    samples = samples.reshape(samples.shape[0] if samples.ndim else 1, -1)
    if not (isinstance(rate, (int, np.integer)) and rate > 0):
        raise AudioError(f"{name}: sample rate must be a positive whole number of Hz, "
                         f"got {rate!r}")
    if samples.size == 0:
        raise AudioError(f"{name}: contains no audio samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name}: contains NaN or infinite samples")
    y = samples.mean(axis=1)
    if rate != sr:
        # what librosa.resample(res_type="soxr_hq") calls, without the second its first
        # call spends loading librosa's lazily imported modules
        y = soxr.resample(y, rate, sr, quality="soxr_hq")
    if len(y) < n_fft:
        raise AudioError(f"{name}: too short ({len(y)} samples at {sr} Hz; "
                         f"one STFT frame needs {n_fft})")
    if np.max(np.abs(y)) < SILENCE_PEAK:
        raise AudioError(f"{name}: is silent (peak below -80 dBFS)")
    return y.astype(np.float32)


def atomic_write(path, write):
    """Call write(tmp_path), then rename onto `path`: readers never see half a file,
    and a failure leaves whatever was at `path` untouched. Every output goes through
    here, so a system error on the way (full disk, name too long, a folder in the way)
    becomes the one OutputError line that names `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]  # keep the extension: soundfile and matplotlib read it
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    except OSError as e:
        raise cannot_write(path, e) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; a result should not be
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise cannot_write(path, e) from None
        raise


FULL_SCALE = 32767 / 32768  # the largest sample 16-bit PCM holds; libsndfile clips past it


def write_csv(path, header, rows):
    """A CSV file of the `header` row and `rows` (lists of cells), whole or not at all."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(header)
            out.writerows(rows)
    atomic_write(path, write)


def fit_full_scale(y, ceiling=FULL_SCALE):
    """`y` scaled down so that its peak is at most `ceiling`, and the gain used (1 when
    it already fits). Griffin-Lim's phase is its own, so its peak can pass full scale
    even where the magnitudes are those of a clip that did not; a wav would clip it."""
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak <= ceiling:
        return y, 1.0
    gain = ceiling / peak
    return (y * gain).astype(y.dtype), gain


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def save_wav(path, y, sr=SAMPLE_RATE):
    # Encoded in memory first: libsndfile reports a failed write as "System error", with
    # no reason; Python's own write says which (e.g. No space left on device).
    buffer = io.BytesIO()
    sf.write(buffer, y, sr, subtype="PCM_16", format="WAV")
    atomic_write(path, lambda tmp: _write_bytes(tmp, buffer.getvalue()))


def _folders_to_make(path):
    """The folders os.makedirs(path) would create, outermost first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing[::-1]


def remove_empty_dirs(folders):
    """Remove `folders` (outermost first, as check_writable_dir returns them) where they
    are empty, innermost first: a failed or interrupted run leaves no empty folder."""
    for folder in reversed(folders):
        if not os.path.isdir(folder):  # never made (makedirs failed part way) or gone
            continue
        try:
            os.rmdir(folder)  # only ever removes an empty folder
        except OSError:
            return  # holds something: so do the ones around it


def _make_a_file_in(folder, path):
    """Make and remove a file in `folder`; if it cannot be made, the error names `path`.
    os.access alone is not enough: as root it passes /sys/kernel, which refuses files."""
    try:
        fd, trial = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    except OSError as e:
        raise cannot_write(path, e) from None
    os.close(fd)
    os.remove(trial)


def _refusal(code):
    return OSError(code, os.strerror(code))


def check_writable_files(paths):
    """What can be known before writing each of `paths`, so that a long run does not fail
    at its end: its folder takes files, its name fits the file system, and no folder is
    in the way."""
    tried = set()
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in tried:
            _make_a_file_in(folder, path)
            tried.add(folder)
        if (len(os.fsencode(os.path.basename(path))) > os.pathconf(folder, "PC_NAME_MAX")
                or len(os.fsencode(os.path.abspath(path))) >= os.pathconf(folder, "PC_PATH_MAX")):
            raise cannot_write(path, _refusal(errno.ENAMETOOLONG))
        if os.path.isdir(path):
            raise cannot_write(path, _refusal(errno.EISDIR))


def check_writable_dir(path, files=()):
    """Create the output folder if needed, make sure files can be made in it, and check
    each of `files` (paths in it) as check_writable_files does. Returns the folders it
    created, for remove_empty_dirs; when a check fails it removes them itself."""
    created = _folders_to_make(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        remove_empty_dirs(created)
        raise AudioError(f"{path}: cannot create output folder ({e.strerror})") from None
    try:
        if not os.path.isdir(path):
            raise AudioError(f"{path}: output path exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise AudioError(f"{path}: output folder is not writable")
        _make_a_file_in(path, path)
        check_writable_files(files)
    except BaseException:
        remove_empty_dirs(created)
        raise
    return created


@contextlib.contextmanager
def output_dir(path, files=()):
    """check_writable_dir, and the folders it made removed again if the work inside
    fails or is interrupted before it writes anything into them."""
    created = check_writable_dir(path, files)
    try:
        yield
    finally:
        remove_empty_dirs(created)


# ---------------------------------------------------------------------------- spectrograms

SPECTROGRAM_BLOCK = 8192  # frames (48 s) of STFT made at once for long clips


def stft(y, n_fft=N_FFT, center=True):
    """librosa.stft(y, n_fft=n_fft, hop_length=n_fft // 4, center=center), computed by
    torch: the same transform to float32 rounding (a test holds them together), without
    the seconds librosa's first STFT and inverse STFT spend loading and compiling its
    modules in every run (1.3-3.8 s with its resampling, measured). (F, frames) complex64."""
    return _torch_stft(torch.as_tensor(np.asarray(y, np.float32)), n_fft, center=center).numpy()


def _torch_stft(y, n_fft, window=None, center=True):
    """torch.stft as librosa.stft's defaults: periodic Hann window, hop n_fft // 4, zero
    padding (for centred frames); y a tensor on any device."""
    if window is None:
        window = torch.hann_window(n_fft, periodic=True, device=y.device)
    return torch.stft(y, n_fft=n_fft, hop_length=n_fft // 4, window=window, center=center,
                      pad_mode="constant", return_complex=True)


def frame_count(samples, n_fft=N_FFT):
    """Frames of stft() for a clip of `samples` samples (centred frames)."""
    return 1 + samples // (n_fft // 4)


def stft_frames(y, start, stop, n_fft=N_FFT):
    """Frames start..stop-1 of stft(y), from just the samples they cover: the STFT of a
    long clip a block at a time. Frame j is centred on sample j * hop, and the clip is
    taken as zero beyond its ends, as stft() pads it."""
    hop = n_fft // 4
    if start == 0 and stop >= frame_count(len(y), n_fft):
        return stft(y, n_fft)[:, :stop]
    first, last = start * hop - n_fft // 2, (stop - 1) * hop + n_fft // 2
    piece = np.zeros(last - first, dtype=np.float32)
    lo, hi = max(first, 0), min(last, len(y))
    piece[lo - first:hi - first] = y[lo:hi]
    return stft(piece, n_fft, center=False)


def per_frame_of_stft(y, transform, n_fft=N_FFT, block=SPECTROGRAM_BLOCK):
    """transform(X) of y's complex STFT X (F, frames) -> float32 (F, frames), for a
    transform that works on each frame alone: a long clip `block` frames at a time, so
    that its complex STFT never exists whole."""
    frames = frame_count(len(y), n_fft)
    out = np.empty((n_fft // 2 + 1, frames), np.float32)
    for start in range(0, frames, block):
        stop = min(start + block, frames)
        out[:, start:stop] = transform(stft_frames(y, start, stop, n_fft))
    return out


def log_spectrogram(y, n_fft=N_FFT, block=SPECTROGRAM_BLOCK):
    """S = log(1 + |STFT|), shape (n_fft // 2 + 1, frames): the reference's features,
    a long clip `block` frames at a time."""
    return per_frame_of_stft(y, lambda X: np.log1p(np.abs(X)), n_fft, block)


def magnitude(log_spec):
    """|STFT| = exp(S) - 1 of a log spectrogram, in float64; the optimiser may leave S a
    little below 0, which would be a negative magnitude, so those bins count as 0."""
    return np.expm1(np.maximum(np.asarray(log_spec, np.float64), 0))


# pYIN's memory grows with the clip it is given, and its time: 300 s of speech at once took
# 21 s and 0.7 GB beyond the process's own (60 s: 5.5 s and 0.27 GB; 2-core Intel Xeon), so
# a 30-minute voice sample would take minutes and gigabytes to give one number, which a few
# seconds of speech settle. A clip is measured in pieces of at most F0_PIECE seconds, and
# one longer than F0_PIECES of them on that many pieces spread evenly over it.
F0_PIECE, F0_PIECES = 30.0, 4


def median_f0(y, sr=SAMPLE_RATE):
    """Median fundamental frequency in Hz over the voiced frames (librosa's pYIN,
    60-600 Hz), or None if no frame is voiced. A clip longer than F0_PIECE seconds is
    measured in pieces: all of it up to F0_PIECES pieces, else that many spread evenly."""
    piece = int(F0_PIECE * sr)
    count = max(-(-len(y) // piece), 1)
    if count <= F0_PIECES:  # the whole clip, in `count` equal pieces
        bounds = np.linspace(0, len(y), count + 1).round().astype(int)
        parts = [y[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        starts = np.linspace(0, len(y) - piece, F0_PIECES).round().astype(int)
        parts = [y[a:a + piece] for a in starts]
    voiced_f0 = []
    for part in parts:
        f0, voiced, _ = librosa.pyin(part, fmin=60, fmax=600, sr=sr, frame_length=2048)
        voiced_f0.append(f0[voiced])
    voiced_f0 = np.concatenate(voiced_f0)
    return float(np.median(voiced_f0)) if len(voiced_f0) else None


def _stretch_bins(A, ratio):
    """A(f) -> A(f / ratio) along axis 0, linearly interpolated; the top bin is held
    where f / ratio runs past it."""
    src = np.minimum(np.arange(A.shape[0]) / ratio, A.shape[0] - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, A.shape[0] - 1)
    frac = (src - low)[:, None]
    return A[low] * (1 - frac) + A[high] * frac


def shift_pitch_formants(y, pitch_ratio=1.0, formant_ratio=1.0, n_fft=N_FFT, lifter=30,
                         block=SPECTROGRAM_BLOCK):
    """The log spectrogram (as log_spectrogram) of `y` with its harmonics moved up by
    `pitch_ratio` and its spectral envelope (formants) by `formant_ratio`, timing kept.

    Source-filter split by cepstral smoothing: the envelope is the log magnitude with
    every quefrency at or past `lifter` samples (1.4 ms at 22050 Hz, below any speaking
    pitch period) zeroed; the rest, the harmonic fine structure, is what pitch is. Each is
    stretched along the frequency axis by its ratio and the two are added back. Each
    frame on its own, so a long clip goes `block` frames at a time, as log_spectrogram.
    """
    def shifted(X):
        log_mag = np.log(np.abs(X) + 1e-6)
        cepstrum = np.fft.irfft(log_mag, n=n_fft, axis=0)
        cepstrum[lifter:n_fft - lifter + 1] = 0
        envelope = np.fft.rfft(cepstrum, axis=0).real
        fine = log_mag - envelope
        moved = _stretch_bins(envelope, formant_ratio) + _stretch_bins(fine, pitch_ratio)
        return np.log1p(np.exp(moved))
    return per_frame_of_stft(y, shifted, n_fft, block)


def follow_loudness(log_spec, content_log_spec, strength, max_gain_db=20.0):
    """`log_spec` with each frame's loudness moved `strength` of the way toward the
    content's loudness contour, in dB; both are log1p magnitude spectrograms of equal
    frame count.

    Loudness contour: each frame's energy (sum of squared magnitudes) over the clip's mean
    frame energy. Every bin of frame t is scaled by
        g_t = (contour_content[t] / contour_generated[t]) ^ (strength / 2),
    held within +-max_gain_db; the spectrum within a frame stays what the transfer made.
    Style texture laid into the content's pauses, and syllables the style loss has
    flattened, are what this undoes. Measured with -style_kernel 3x5, it raised both STOI
    and the speaker margin (see EXPERIMENTS.md).
    """
    generated, content = magnitude(log_spec), magnitude(content_log_spec)
    floor = 1e-10  # an all-zero frame: a finite, and then clipped, gain
    energy_g = (generated ** 2).sum(axis=0) + floor
    energy_c = (content ** 2).sum(axis=0) + floor
    log_ratio = np.log(energy_c / energy_c.mean()) - np.log(energy_g / energy_g.mean())
    limit = max_gain_db / 20 * np.log(10)  # in nepers of magnitude
    gain = np.exp(np.clip(strength / 2 * log_ratio, -limit, limit))
    return np.log1p(generated * gain).astype(np.float32)


# ---------------------------------------------------------------------------- Griffin-Lim

def _librosa_pair(n_fft, length):  # the reference's transforms, kept to test _torch_pair by
    forward = lambda y: librosa.stft(y, n_fft=n_fft, hop_length=n_fft // 4)
    inverse = lambda X: librosa.istft(X, hop_length=n_fft // 4, n_fft=n_fft, length=length)
    return forward, inverse


def _torch_pair(n_fft, length, device):
    # the same transforms as librosa's defaults; tests hold the two together
    window = torch.hann_window(n_fft, periodic=True, device=device)
    forward = lambda y: _torch_stft(y, n_fft, window)
    inverse = lambda X: torch.istft(X, n_fft=n_fft, hop_length=n_fft // 4, window=window,
                                    center=True, length=length)
    return forward, inverse


GRIFFIN_LIM_CHUNK = 4096  # frames (24 s) inverted at once: memory stays bounded
GRIFFIN_LIM_OVERLAP = 128  # frames two chunks share, to hand the phase over


def griffin_lim(log_spec, length, iters=50, n_fft=N_FFT, phase=None, momentum=0.0,
                seed=0, device="cpu", backend=None, chunk=GRIFFIN_LIM_CHUNK):
    """Invert a log1p magnitude spectrogram to a waveform of `length` samples.

    The reference's inversion: magnitude exp(S) - 1, random phase, `iters` rounds of
    istft then stft keeping the new phase. `phase` replaces the random start (e.g. the
    content's phase): an array (F, T), or a function (start, stop) -> its frames
    start..stop-1, so that a long clip's phase is made a chunk at a time. momentum > 0
    is the fast Griffin-Lim of Perraudin et al. backend "torch" (the default) or
    "librosa" does the transforms: the same to float32 rounding (tested), torch's without
    librosa's seconds of first-call compiling.

    A spectrogram of more than `chunk` frames is inverted in overlapping chunks, each
    starting where its predecessor ended: the shared frames begin from the phase the
    previous chunk reached, and the waveforms are cross-faded across them.
    """
    frames = log_spec.shape[1]
    rng = np.random.default_rng(seed)
    if phase is not None and not callable(phase):
        phase_array = phase
        phase = lambda start, stop: phase_array[:, start:stop]
    backend = backend or "torch"
    if frames <= chunk:
        start_phase = (phase(0, frames) if phase is not None
                       else rng.uniform(-np.pi, np.pi, log_spec.shape))
        return _griffin_lim(magnitude(log_spec), np.exp(1j * start_phase), length, iters,
                            n_fft, momentum, device, backend)[0]
    hop = n_fft // 4
    bounds = segment_bounds(frames, chunk, min(GRIFFIN_LIM_OVERLAP, chunk // 4))
    # chunk k's waveform runs from its first frame's centre to its last's
    spans = [(start * hop, min(length, (stop - 1) * hop)) for start, stop in bounds]
    spans[-1] = (spans[-1][0], length)
    out = np.zeros(length, np.float32)
    angles, previous_start = None, 0
    for (start, stop), (first, last), fade in zip(bounds, spans, crossfade_weights(spans)):
        start_phase = (phase(start, stop) if phase is not None
                       else rng.uniform(-np.pi, np.pi, (log_spec.shape[0], stop - start)))
        start_angles = np.exp(1j * start_phase)
        if angles is not None:  # the frames shared with the previous chunk
            shared = angles.shape[1] - (start - previous_start)
            start_angles[:, :shared] = angles[:, -shared:]
        y, angles = _griffin_lim(magnitude(log_spec[:, start:stop]), start_angles,
                                 last - first, iters, n_fft, momentum, device, backend)
        out[first:last] += y * fade
        previous_start = start
    return out


def _griffin_lim(target, angles, length, iters, n_fft, momentum, device, backend):
    """Griffin-Lim on magnitudes `target` (F, T) from unit phases `angles`; returns the
    waveform and the phases it ended with, as numpy arrays."""
    if backend == "librosa":
        forward, inverse = _librosa_pair(n_fft, length)
    else:
        forward, inverse = _torch_pair(n_fft, length, device)
        target = torch.as_tensor(target, dtype=torch.float32, device=device)
        angles = torch.as_tensor(angles, dtype=torch.complex64, device=device)
    previous = 0
    for _ in range(iters - 1):
        rebuilt = forward(inverse(target * angles))
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        previous = rebuilt
        angles = angles / (abs(angles) + 1e-16)
    y = inverse(target * angles)
    if torch.is_tensor(y):
        y, angles = y.cpu().numpy(), angles.cpu().numpy()
    return np.asarray(y, dtype=np.float32), angles


# ---------------------------------------------------------------------------- segments

def segment_bounds(frames, length, overlap):
    """(start, stop) of each segment of a clip of `frames` frames: the whole clip when it
    fits in `length`; else the fewest segments of exactly `length` frames, evenly spaced
    from the first frame to the last, each overlapping the next by `overlap` or more."""
    if frames <= length:
        return [(0, frames)]
    count = math.ceil((frames - overlap) / (length - overlap))
    starts = [round(i * (frames - length) / (count - 1)) for i in range(count)]
    return [(start, start + length) for start in starts]


def optimisation_segments(frames, length, overlap):
    """segment_bounds' segments, or where it costs less one segment fewer (never fewer
    than two), each as much longer as covers the clip. An evaluation costs about the sum
    of the squares of the segments' lengths (the style loss's products over time), and a
    segment needed about as many evaluations whatever its length (EXPERIMENTS.md): three
    of 517 frames over a 1218-frame clip overlap by 166 frames at each seam, where two of
    631 cover it for less."""
    bounds = segment_bounds(frames, length, overlap)
    count = len(bounds)
    if count > 2:
        longer = math.ceil((frames + (count - 2) * overlap) / (count - 1))
        if (count - 1) * longer ** 2 <= count * length ** 2:
            return segment_bounds(frames, longer, overlap)
    return bounds


def crossfade_weights(bounds):
    """(stop - start,) weights per segment that sum to 1 over the segments at every
    position: 1 where one segment alone covers it, a raised-cosine hand-over across each
    overlap. Where evenly spaced segments overlap by more than half their length, three
    meet; the hand-overs are then divided by their sum there, so it stays 1."""
    ramps = [np.ones(stop - start) for start, stop in bounds]
    for k in range(len(bounds) - 1):
        shared = bounds[k][1] - bounds[k + 1][0]
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(shared) + 0.5) / shared)  # 0 -> 1
        ramps[k][len(ramps[k]) - shared:] *= 1 - rise
        ramps[k + 1][:shared] *= rise
    total = np.zeros(bounds[-1][1])
    for (start, stop), ramp in zip(bounds, ramps):
        total[start:stop] += ramp
    return [ramp / total[start:stop] for (start, stop), ramp in zip(bounds, ramps)]


# ---------------------------------------------------------------------------- pictures

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    plt = _pyplot()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


PICTURE_COLUMNS = 1500  # time columns drawn per spectrogram; longer clips are averaged down
PICTURE_SECONDS = 12  # width, in inches, a panel grows to at most
PICTURE_ROW = 16  # inches of panels side by side at most; wider ones are stacked instead,
# since three 12-inch panels in a row (a 10-s clip) made a strip 4000 pixels wide


def picture_columns(log_spec, columns=PICTURE_COLUMNS):
    """(F, T) -> (F, <= columns) magnitudes: each run of ceil(T / columns) frames averaged
    in power, so a song's or a lecture's picture stays readable and small in memory."""
    step = math.ceil(log_spec.shape[1] / columns)
    if step == 1:
        return magnitude(log_spec)
    power = np.stack([(magnitude(log_spec[:, i:i + step]) ** 2).mean(axis=1)
                      for i in range(0, log_spec.shape[1], step)], axis=1)
    return np.sqrt(power)


def plot_spectrograms(named_specs, path, sr=SAMPLE_RATE, n_fft=N_FFT):
    """Spectrograms with one dB colour bar: time in s, frequency in Hz (low at the bottom).

    named_specs: list of (title, log1p magnitude array of shape (freq, frames)). Short
    clips are drawn side by side, longer ones one above the other (PICTURE_ROW). Clips of
    more than PICTURE_COLUMNS frames are drawn averaged down to that many columns (the
    title says so).
    """
    plt = _pyplot()
    hop = n_fft // 4
    # 20 log10 |S| with a -100 dB floor: librosa.amplitude_to_db(ref=1, top_db=None)
    db = [20 * np.log10(np.maximum(picture_columns(s), 1e-5)) for _, s in named_specs]
    vmax = max(float(d.max()) for d in db)
    vmin = vmax - 80  # 80 dB of range, as a listener would care about
    durations = [s.shape[1] * hop / sr for _, s in named_specs]
    widths = [min(PICTURE_SECONDS, max(2.5, 1.6 * duration)) for duration in durations]
    if sum(widths) <= PICTURE_ROW:
        shape, size = (1, len(named_specs)), (sum(widths) + 1.5, 3.6)
    else:
        shape, size = (len(named_specs), 1), (max(widths) + 1.5, 2.8 * len(named_specs))
    fig, axes = plt.subplots(*shape, figsize=size, squeeze=False, constrained_layout=True)
    axes = axes.ravel()
    for ax, (title, spec), d, duration in zip(axes, named_specs, db, durations):
        image = ax.imshow(d, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                          extent=[0, duration, 0, sr / 2])
        if d.shape[1] < spec.shape[1]:
            title += f" (averaged over {spec.shape[1] / d.shape[1] * hop / sr * 1000:.0f} ms)"
        ax.set_title(title)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (Hz)")
    fig.colorbar(image, ax=axes.tolist(), format="%+.0f dB", label="level (dB)")
    save_figure(fig, path)


def plot_losses(history, path, title="loss"):
    """history: dict name -> list of (step, value); drawn on a log scale. Names such as
    "style (seed 1)" share the colour of their kind ("style") and get a line style per
    run, so several runs stay readable in one picture."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    colours, dashes = {}, {}
    for name, points in history.items():
        kind, _, run = name.partition(" (")
        colour = colours.setdefault(kind, f"C{len(colours)}")
        dash = dashes.setdefault(run, ["-", "--", ":", "-."][len(dashes) % 4])
        if points:
            steps, values = zip(*points)
            ax.plot(steps, np.maximum(values, 1e-12), label=name, color=colour, linestyle=dash)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if any(history.values()):
        ax.legend()
    else:  # -epochs 0: nothing was optimised, and an empty legend would only warn
        ax.text(0.5, 0.5, "no iterations run", transform=ax.transAxes, ha="center")
    save_figure(fig, path)


def plot_confusion(matrix, labels, path, title="confusion matrix"):
    """Rows: true speaker, columns: predicted speaker; counts written in the cells."""
    plt = _pyplot()
    n = len(labels)
    size = max(4.0, 0.32 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7 if n > 12 else 9)
    ax.set_yticks(range(n), labels, fontsize=7 if n > 12 else 9)
    ax.set_xlabel("predicted speaker")
    ax.set_ylabel("true speaker")
    ax.set_title(title)
    if n <= 40:
        for i in range(n):
            for j in range(n):
                if matrix[i][j]:
                    ax.text(j, i, int(matrix[i][j]), ha="center", va="center", fontsize=6,
                            color="white" if matrix[i][j] > np.max(matrix) / 2 else "black")
    fig.colorbar(image, ax=ax, label="utterances")
    save_figure(fig, path)
