"""Speaker identification from the Gram of a fixed random CNN's features.

    python vctk_identify.py PATH

The reference's experiment: each utterance's log spectrogram goes through the one-layer
random CNN of model.py, the Gram of its features over time (8160 x 8160) is the only
feature, and each test utterance gets the speaker of the training utterance whose Gram
is nearest in mean squared difference. PATH is VCTK 0.80 (wav48/) or 0.92
(wav48_silence_trimmed/, the mic1 files), told apart by what is in it, or a folder of
speaker folders of .wav/.flac files. Prints the result as a row of the reference's table
and writes the confusion matrix into output/ (or -output).
"""
import math
import os
import resource
import sys
import time

import librosa
import numpy as np
import torch
from tqdm import tqdm

import utils
from model import RandomCNN
from cli import OneLineParser, UsageError, guarded, number, pick_device, seed_number

AUDIO_EXTENSIONS = (".wav", ".flac")
TILE_BYTES = 1 << 30  # the Gram tile of every utterance at once: the largest thing held
SPAN = 1 << 15  # longest float32 sum in a matrix product; longer ones are added in float64
CHUNK = 1 << 22  # entries of X worked on at once after a tile is made: stays in cache
BATCH = 16  # utterances whose tiles are made in one call
BLOCK, BLOCK_TRAIN = 15, 9  # the reference's split: 9 of every 15 utterances train

METHODS = {  # name: what the table calls it
    "gram": "Gram, mean squared difference (reference)",
    "gram_per_frame": "Gram / frames, mean squared difference",
    "gram_cosine": "Gram, cosine distance",
    "mfcc_mean": "MFCC mean, squared difference (baseline)",
}


# ------------------------------------------------------------------------------ command line

def build_parser():
    p = OneLineParser(prog="vctk_identify.py", description=__doc__.split("\n\n")[2],
                      epilog="Split: each speaker's first -utterances utterances, sorted by file "
                             "name, are split in order. Without -train, as the reference: "
                             "positions 0-8 of every 15 train and 9-14 test (15 utterances: 9 "
                             "train, 6 test). With -train N, the first N train and the rest "
                             "test. The reference's two rows: the defaults, and -speakers 4 "
                             "-utterances 100 -train 60.")
    p.add_argument("path", metavar="PATH",
                   help="VCTK 0.80 or 0.92 folder (holding speaker-info.txt), or a folder of "
                        "speaker folders of .wav/.flac files")
    p.add_argument("-speakers", type=number(int, 2), default=30,
                   help="the first this many speakers, in speaker-info.txt's order or else "
                        "by folder name (default: %(default)s)")
    p.add_argument("-utterances", type=number(int, 2), default=15,
                   help="the first this many utterances of each speaker (default: %(default)s)")
    p.add_argument("-train", type=number(int, 1), default=None,
                   help="training utterances per speaker (default: 9 of every 15; see below)")
    p.add_argument("-seed", type=seed_number, default=0,
                   help="seed of the random CNN's weights (default: %(default)s)")
    p.add_argument("-device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when there is one (default: %(default)s)")
    p.add_argument("-compare", action="store_true",
                   help="also report Grams normalised by frame count, the cosine distance of "
                        "Grams, and a baseline of mean MFCCs")
    p.add_argument("-output", default="output",
                   help="folder for the confusion matrices (default: %(default)s)")
    return p


# ------------------------------------------------------------------------------ the corpus

def read_speaker_info(path):
    """Speaker folder names in the order speaker-info.txt lists them.

    0.80 writes IDs as numbers (225), 0.92 as folder names (p225, s5).
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.split() for line in f if line.strip()]
    if not lines or lines[0][0].upper() != "ID":
        raise UsageError(f"{path}: no 'ID AGE GENDER ...' header line; not VCTK's speaker list")
    ids = [fields[0] for fields in lines[1:]]
    if not ids:
        raise UsageError(f"{path}: lists no speakers")
    return [f"p{i}" if i.isdigit() else i for i in ids]


def find_corpus(root):
    """(layout name, speakers, each speaker's audio folder, audio file name endings)."""
    if not os.path.exists(root):
        raise UsageError(f"{root}: no such folder")
    if not os.path.isdir(root):
        raise UsageError(f"{root}: is a file; give the corpus folder")
    info = os.path.join(root, "speaker-info.txt")
    layouts = [("wav48_silence_trimmed", "VCTK 0.92", ("_mic1.flac",)),  # mic2: same takes
               ("wav48", "VCTK 0.80", (".wav",))]
    for audio, name, endings in layouts:
        if os.path.isdir(os.path.join(root, audio)):
            if not os.path.isfile(info):
                raise UsageError(f"{info}: missing ({name} layout: {audio}/ is there)")
            speakers = read_speaker_info(info)
            return name, speakers, {s: os.path.join(root, audio, s) for s in speakers}, endings
    if os.path.isfile(info):
        raise UsageError(f"{root}: has speaker-info.txt but neither wav48_silence_trimmed/ "
                         f"(VCTK 0.92) nor wav48/ (VCTK 0.80)")
    folders = sorted(e.name for e in os.scandir(root)
                     if e.is_dir() and not e.name.startswith("."))
    nested = [os.path.join(root, f) for f in folders
              if os.path.isfile(os.path.join(root, f, "speaker-info.txt"))]
    if nested:
        raise UsageError(f"{root}: not a corpus itself; did you mean {nested[0]}?")
    if not folders:
        raise UsageError(f"{root}: neither VCTK (no speaker-info.txt) nor a folder of speaker "
                         f"folders")
    return "speaker folders", folders, {s: os.path.join(root, s) for s in folders}, AUDIO_EXTENSIONS


def is_train(n_utterances, n_train):
    """Which of a speaker's utterances, in order, train (see the parser's epilog)."""
    if n_train is None:
        return [k % BLOCK < BLOCK_TRAIN for k in range(n_utterances)]
    return [k < n_train for k in range(n_utterances)]


def select(root, n_speakers, n_utterances, n_train):
    """The files of the experiment: ([(speaker, path)] to train, the same to test)."""
    split = is_train(n_utterances, n_train)
    if all(split):
        raise UsageError(f"-utterances {n_utterances} leaves no test utterance "
                         + (f"with -train {n_train}" if n_train else "under the 9-of-15 split "
                            "(use 10 or more, or -train)"))
    name, speakers, folders, endings = find_corpus(root)
    if len(speakers) < n_speakers:
        raise UsageError(f"{root}: {len(speakers)} speakers, -speakers asks for {n_speakers}")
    train, test = [], []
    for speaker in speakers[:n_speakers]:
        folder = folders[speaker]
        if not os.path.isdir(folder):
            raise UsageError(f"{folder}: missing (speaker {speaker} of {name})")
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(endings))
        if not files:
            kinds = " or ".join(f"*{e}" for e in endings)
            raise UsageError(f"{folder}: no audio files ({kinds})")
        if len(files) < n_utterances:
            raise UsageError(f"{folder}: {len(files)} utterances, -utterances asks for "
                             f"{n_utterances}")
        for f, trains in zip(files, split):
            (train if trains else test).append((speaker, os.path.join(folder, f)))
    print(f"{name} at {root}: {n_speakers} speakers, {n_utterances} utterances each, "
          f"{len(train)} train / {len(test)} test", file=sys.stderr)
    return train, test


def load(paths, device, with_mfcc):
    """Log spectrograms (as tensors on `device`) and, if asked, mean MFCC vectors."""
    specs, mfccs = [], []
    for path in tqdm(paths, desc="audio", unit="file", file=sys.stderr, dynamic_ncols=True):
        y = utils.load_audio(path)
        specs.append(torch.from_numpy(utils.log_spectrogram(y)).to(device))
        if with_mfcc:
            mfccs.append(librosa.feature.mfcc(y=y, sr=utils.SAMPLE_RATE).mean(axis=1))
    return specs, np.array(mfccs, dtype=np.float64)


# ------------------------------------------------------------------------------ Gram distances
#
# The distances between 8160 x 8160 Grams, exactly, without holding one per utterance.
# Two exact routes, counted for the 30 x 15 row (270 train x 180 test = 48600 pairs,
# N = 450 utterances of T ~ 500 frames; R = 8160 feature rows):
#   per pair, <G_a, G_b> = ||A_a^T A_b||^2 (SPEC.md): R * Ta * Tb multiply-adds a pair,
#       48600 * 8160 * 500^2 ~ 1e14;
#   the Grams' entries a tile at a time for every utterance, compared as one matrix
#       product across utterances: R^2 / 2 * T per utterance to make the upper triangle
#       (450 * 3.3e7 * 500 ~ 7.5e12), and R^2 / 2 per pair to compare them (~1.6e12).
# The second is about 11x cheaper here and stays cheaper for clips longer than about
# half a second (85 frames), so it is the one used.

def group_bins_for(n_utterances, channels, bins, budget=TILE_BYTES):
    """Frequency bins per tile side: the widest square tile whose float32 entries for
    every utterance fit in `budget` bytes."""
    side = math.isqrt(budget // (4 * n_utterances))  # tile rows
    return max(1, min(bins, side // channels))


def length_batches(specs, n_train, size):
    """The utterances in batches of similar length, each zero-padded to its longest.

    Zero padding changes no Gram: the network has no bias and sees one frame at a time, so
    a silent frame's features are all zero and add nothing. Sorting keeps the padding small; training and test
    utterances are sorted apart, so the first n_train places stay the training ones.
    Returns the order taken and the padded batches, (B, F, T_longest) each.
    """
    by_length = lambda n: specs[n].shape[1]
    order = (sorted(range(n_train), key=by_length)
             + sorted(range(n_train, len(specs)), key=by_length))
    batches = []
    for lo in range(0, len(order), size):
        members = [specs[n] for n in order[lo:lo + size]]
        batch = members[0].new_zeros(len(members), members[0].shape[0],
                                     max(m.shape[1] for m in members))
        for b, m in enumerate(members):
            batch[b, :, :m.shape[1]] = m
        batches.append(batch)
    return order, batches


@torch.no_grad()
def gram_products(specs, n_train, net, group_bins, batch_size=BATCH, progress=False):
    """Inner products of the utterances' Grams over time, <G_a, G_b> = sum(G_a * G_b).

    specs: log spectrograms (F, T_n) on one device, the n_train training ones first.
    Returns, in float64, cross (n_train, n_test) with cross[a, b] = <G_a, G_{n_train + b}>
    and norms (N,) with norms[n] = <G_n, G_n>.

    The Gram's rows are taken bins-major (any fixed order of rows gives the same inner
    products) and cut into square tiles of group_bins frequency bins x all channels; only
    the tiles on and above the diagonal are made, those above counted twice. One tile of
    every utterance is a row of X (made batch_size utterances at a time), and X_train X_test^T
    gives that tile's share of all pairs at once. The features of the bins a tile needs
    are recomputed for it (3 taps per entry, against the tile's group_bins * channels per
    Gram entry): cheaper than holding every utterance's.
    """
    kh = net.conv.kernel_size[0]
    channels = net.conv.out_channels
    bins = specs[0].shape[0] - kh + 1
    groups = [(lo, min(lo + group_bins, bins)) for lo in range(0, bins, group_bins)]
    tiles = [(i, j) for i in range(len(groups)) for j in range(i, len(groups))]
    N, device = len(specs), specs[0].device
    order, batches = length_batches(specs, n_train, batch_size)
    tile_entries = (channels * group_bins) ** 2
    X_all = torch.empty(N * tile_entries, device=device)
    scratch = torch.empty(max(CHUNK, tile_entries), device=device)
    cross = torch.zeros(n_train, N - n_train, dtype=torch.float64, device=device)
    norms = torch.zeros(N, dtype=torch.float64, device=device)

    def features(batch, group):  # all channels of bins lo..hi: (B, channels * (hi - lo), T)
        lo, hi = group
        return net(batch[:, lo:hi + kh - 1]).flatten(1, 2)

    for i, j in tqdm(tiles, desc="Gram tiles", unit="tile", file=sys.stderr,
                     dynamic_ncols=True, disable=not progress):
        rows = channels * (groups[i][1] - groups[i][0])
        cols = channels * (groups[j][1] - groups[j][0])
        X = X_all[:N * rows * cols].view(N, rows * cols)
        lo = 0
        for batch in batches:
            a = features(batch, groups[i])
            b = a if i == j else features(batch, groups[j])
            hi = lo + len(batch)
            torch.bmm(a, b.transpose(1, 2), out=X[lo:hi].view(-1, rows, cols))
            lo = hi
        # Centred on the mean tile, the float32 products below are of what tells the
        # utterances apart, not of the large part they share; the mean's share is added
        # back exactly, in float64. A few rows at a time, so each is read from memory once.
        mean = X.mean(0)
        sq = torch.empty(N, dtype=torch.float64, device=device)  # ||x_n - mean||^2
        u = torch.empty_like(sq)  # <x_n - mean, mean>
        step = max(1, CHUNK // (rows * cols))
        for lo in range(0, N, step):
            x = X[lo:lo + step]
            x -= mean
            products = scratch[:x.numel()].view_as(x)
            # torch sums pairwise, so float32 sums of 10^5 and more terms stay exact enough
            sq[lo:lo + step] = torch.mul(x, x, out=products).sum(1)
            u[lo:lo + step] = torch.mul(x, mean, out=products).sum(1)
        mean_sq = mean.double().square().sum()
        weight = 1 if i == j else 2
        between = sum((X[:n_train, k:k + SPAN] @ X[n_train:, k:k + SPAN].T).double()
                      for k in range(0, rows * cols, SPAN))
        cross += weight * (between + u[:n_train, None] + u[None, n_train:] + mean_sq)
        norms += weight * (sq + 2 * u + mean_sq)
    place = torch.empty(N, dtype=torch.long, device=device)  # each utterance's row of X
    place[order] = torch.arange(N, device=device)
    return cross[place[:n_train]][:, place[n_train:] - n_train], norms[place]


def gram_distances(cross, norms, frames, rows):
    """Each Gram method's distances (n_train, n_test) from the inner products.

    frames: each utterance's frame count, training ones first; rows: the Gram's side.
    """
    n_train = cross.shape[0]
    a, b = norms[:n_train, None], norms[None, n_train:]
    ta, tb = frames[:n_train, None], frames[None, n_train:]
    return {
        "gram": (a + b - 2 * cross) / rows ** 2,
        "gram_per_frame": (a / ta ** 2 + b / tb ** 2 - 2 * cross / (ta * tb)) / rows ** 2,
        "gram_cosine": 1 - cross / (a * b).sqrt(),
    }


# ------------------------------------------------------------------------------ the experiment

def nearest_neighbour(distances, train_labels):
    """The label of the nearest training utterance for each test one (columns)."""
    return train_labels[np.argmin(distances, axis=0)]


def peak_memory():
    """Peak resident memory of this process, and of CUDA allocations if any, in bytes."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None
    return rss, gpu


def confusion_path(args, method):
    return os.path.join(args.output, f"confusion_{args.speakers}x{args.utterances}_{method}.png")


def run(args):
    """The experiment; returns {method: accuracy}."""
    start = time.perf_counter()
    device = pick_device(args.device)  # on CUDA, float32 as on the CPU
    train, test = select(args.path, args.speakers, args.utterances, args.train)
    methods = list(METHODS) if args.compare else ["gram"]
    # the pictures' names are checked now; the folder goes again if nothing is written
    with utils.output_dir(args.output, [confusion_path(args, m) for m in methods]):
        return identify(args, train, test, device, methods, start)


def identify(args, train, test, device, methods, start):
    """Grams, distances and nearest neighbours: prints the table, writes the confusion
    matrices, returns {method: accuracy}."""
    net = RandomCNN(args.seed).to(device)

    utterances = train + test
    specs, mfccs = load([path for _, path in utterances], device, args.compare)
    loaded = time.perf_counter()
    bins = specs[0].shape[0] - net.conv.kernel_size[0] + 1
    rows = net.conv.out_channels * bins
    group_bins = group_bins_for(len(specs), net.conv.out_channels, bins)
    print(f"Gram {rows} x {rows}, in tiles of {group_bins} bins on {device}", file=sys.stderr)
    cross, norms = gram_products(specs, len(train), net, group_bins, progress=True)
    frames = torch.tensor([s.shape[1] for s in specs], dtype=torch.float64, device=device)
    distances = {k: d.cpu().numpy() for k, d in gram_distances(cross, norms, frames, rows).items()}
    if args.compare:
        m_train, m_test = mfccs[:len(train), None], mfccs[None, len(train):]
        distances["mfcc_mean"] = ((m_train - m_test) ** 2).mean(axis=2)
    measured = time.perf_counter()

    speakers = list(dict.fromkeys(s for s, _ in utterances))
    index = {s: k for k, s in enumerate(speakers)}
    train_labels = np.array([index[s] for s, _ in train])
    test_labels = np.array([index[s] for s, _ in test])
    print("| speakers | utterances each | train/test | distance | accuracy |")
    print("|---|---|---|---|---|")
    accuracies = {}
    for method in methods:
        predicted = nearest_neighbour(distances[method], train_labels)
        accuracy = float(np.mean(predicted == test_labels))
        accuracies[method] = accuracy
        print(f"| {len(speakers)} | first {args.utterances} | {len(train)}/{len(test)} | "
              f"{METHODS[method]} | {100 * accuracy:.1f}% |", flush=True)
        confusion = np.zeros((len(speakers), len(speakers)), dtype=int)
        np.add.at(confusion, (test_labels, predicted), 1)
        path = confusion_path(args, method)
        utils.plot_confusion(confusion, speakers, path,
                             title=f"{METHODS[method]}: {100 * accuracy:.1f}% of {len(test)}")
        print(f"wrote {path}", file=sys.stderr)
    print(f"chance: {100 / len(speakers):.1f}%")

    end = time.perf_counter()
    rss, gpu = peak_memory()
    on_gpu = f", {gpu / 2**30:.2f} GiB allocated on the GPU" if gpu is not None else ""
    print(f"time: {end - start:.1f} s (audio {loaded - start:.1f} s, Grams and distances "
          f"{measured - loaded:.1f} s); peak memory: {rss / 2**30:.2f} GiB resident{on_gpu}")
    return accuracies


def main(argv=None):
    args = build_parser().parse_args(argv)

    def work():
        run(args)
        return 0
    return guarded("vctk_identify.py", work, (utils.AudioError,))


if __name__ == "__main__":
    sys.exit(main())
