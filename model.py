"""The fixed random CNN and the two losses of the transfer.

Shapes: a batch of log spectrograms is (B, F, T) with F = 257 frequency bins and T
frames. The network maps it to features (B, C, H, T): C = 32 channels, H = F - 2 = 255
bins (a 3-high kernel, no frequency padding). The style of a clip is the Gram of those
features over time: with A = features reshaped to (C*H, T) = (8160, T), G = A A^T.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class RandomCNN(nn.Module):
    """One Conv2d, 1 -> `channels`, weights drawn from N(0, 1), zero bias, never trained;
    then LeakyReLU(0.2).

    With the same seed the weights are those of the reference run under
    torch.manual_seed(seed): it builds an nn.Conv2d (whose default init uses the global
    generator) and then draws torch.randn for the weights, and so do we. Only the CPU
    generator is seeded, and it is left as it was: torch.manual_seed would also reseed
    every CUDA generator, which fork_rng(devices=[]) does not put back.
    """

    def __init__(self, seed=0, channels=32, kernel=(3, 1)):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            conv = nn.Conv2d(1, channels, kernel_size=kernel, padding=(0, kernel[1] // 2))
            weight = torch.randn(conv.weight.shape)
            # The reference then draws the initial spectrogram from the same stream.
            self.noise_rng_state = torch.get_rng_state()
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.conv = conv

    def forward(self, spectrogram):
        """(B, F, T) -> (B, C, F - kh + 1, T), held frame by frame in memory (a permuted
        view of (B, T, C, H)).

        The reference's convolution, written as one product per frame: the kh x kw input
        values each output reads (the kw frames around it, zero beyond the clip) are
        gathered into X (B, T, kh*kw, H), and the features are W (C, kh*kw) @ X. Profiled
        on a 3-s segment, the convolution's own kernels took 2.3 ms forward and 7 ms
        back, this 1.2 and 0.7, with the same values. It also leaves each frame's C*H
        features contiguous: the style loss's products over time run in the layout the
        matrix library is fastest in (in the (C, H, T) layout, the two that produce
        N x T maps ran half again as long)."""
        B, bins, T = spectrogram.shape
        C, _, kh, kw = self.conv.weight.shape
        H = bins - kh + 1
        frames = F.pad(spectrogram, (kw // 2, kw // 2)).transpose(1, 2)  # (B, T + kw - 1, F)
        X = torch.stack([frames[:, j:j + T, k:k + H] for k in range(kh) for j in range(kw)],
                        dim=2)  # (B, T, kh*kw, H), in the weight's (k, j) order
        features = self.conv.weight.view(C, kh * kw) @ X  # the bias is zero, as the reference's
        return F.leaky_relu(features, 0.2).permute(0, 2, 3, 1)

    def initial_noise(self, shape, scale=1e-3):
        """The reference's starting point, N(0, 1) * 1e-3, drawn on the CPU from the stream
        right after the weights: every clip of a batch gets what a run of its own would get."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.noise_rng_state)
            return torch.randn(shape) * scale


# ------------------------------------------------------------------------------ content loss

def _frame_counts(features, frames):
    """Each clip's W as a (B,) tensor: `frames` when a padded batch gives them, else T."""
    if frames is not None:
        return frames.to(features.dtype)
    B, T = features.shape[0], features.shape[-1]
    return torch.full((B,), T, dtype=features.dtype, device=features.device)


def content_loss(gen_features, content_features, frames=None):
    """1 / (4 C H W) * sum((F(content) - F(gen))^2), per clip: shape (B,).

    `frames` (B,) gives each clip's true W when clips of a batch are zero-padded in time.
    """
    _, C, H, _ = gen_features.shape
    frames = _frame_counts(gen_features, frames)
    return _SquaredDistance.apply(gen_features, content_features) / (4 * C * H * frames)


class _SquaredDistance(torch.autograd.Function):
    """Per clip, sum((gen - content)^2) in float64, (B, C, H, T) -> (B,), with the gradient
    2 (gen - content) written out. Autograd's would multiply by the broadcast row sums,
    which torch's CPU kernels run element by element: three passes over the maps that cost
    a fifth of a 517-frame segment's evaluation (measured), against one here."""

    @staticmethod
    def forward(ctx, gen, content):
        diff = gen - content
        ctx.save_for_backward(diff)
        # Summed into float64: L-BFGS compares successive losses, and float32's rounding
        # at the loss's size would hide the small changes near a flat start and end it
        # early. Each frame's C*H terms summed in float32 (as their norms: one pass over
        # the maps, along their contiguous axes) are exact enough; converting the maps
        # whole would cost more than the sum.
        return torch.linalg.vector_norm(diff, dim=(1, 2)).double().square().sum(dim=1)

    @staticmethod
    def backward(ctx, grad_out):
        diff, = ctx.saved_tensors
        return diff * (2 * grad_out).to(diff.dtype).view(-1, 1, 1, 1), None


# ------------------------------------------------------------------------------ style loss

def gram_over_time(features):
    """(B, C, H, T) -> (B, C*H, C*H): the reference's Gram, rows correlated over time."""
    A = features.flatten(1, 2)
    return A @ A.transpose(1, 2)


def style_loss_textbook(gen_features, style_features, frames=None):
    """1 / (4 C^2 H W) * ||G(style) - G(gen)||_F^2 with the full 8160 x 8160 Grams, per clip.

    The definition, kept as the ground truth for tests and for bench.py's reference
    timing; the transfer itself uses StyleLoss, which is equal but cheaper.
    """
    _, C, H, _ = gen_features.shape
    frames = _frame_counts(gen_features, frames)
    diff = gram_over_time(gen_features) - gram_over_time(style_features)
    return diff.pow(2).sum(dim=(1, 2)) / (4 * C * C * H * frames)


def cheaper_style_form(gen_frames, style_frames, rows):
    """Which exact form of the style loss costs fewer multiply-adds per iteration.

    "time":  ||A^T A||^2 - 2 ||S^T A||^2 + ||S^T S||^2 works on (T x T) products:
             rows * Tg * (Tg + Ts) multiply-adds.
    "gram":  ||A A^T - S S^T||^2 with the (rows x rows) Grams: rows^2 * Tg.
    """
    return "time" if gen_frames + style_frames < rows else "gram"


class _TimeFormStyle(torch.autograd.Function):
    """Per clip, ||c A^T A||^2 - 2 c sum_j s_j ||S_j^T A||^2: the style loss of A scaled by
    sqrt(c) (c (B,) or None for 1), less its constant, with the gradient written out; S_j
    are the columns of S, s_j = +1 (or `signs`, for a target Gram that is a difference,
    S diag(s) S^T).

    For A (B, N, Tg) and the style S (N, Ts): P = A^T A and Q = S^T A are two products;
    the gradient 4 c^2 A P - 4 c S diag(s) Q is two more, the first added in place onto
    the second. c scales the small P and Q only, never the N x Tg maps. Autograd would
    spend three products on the gradient, as it cannot see that P is symmetric.

    Every product is written on the transposes, A^T (B, Tg, N), whose rows are frames:
    the features RandomCNN makes are laid out so, and the gradient is made as
    (B, Tg, N) and handed back transposed, in the features' own layout.
    """

    @staticmethod
    def forward(ctx, A, S, signs=None, scale=None):
        At = A.transpose(1, 2)  # (B, Tg, N)
        P = _symmetric_product(At)  # (B, Tg, Tg)
        Qt = At @ S  # (B, Tg, Ts): Q^T
        ctx.save_for_backward(At, S, P, Qt)
        ctx.signs, ctx.scale = signs, scale
        # Summed in float64: the loss is a small difference of these large sums.
        Q2 = Qt.pow(2).sum(dim=1).double()  # (B, Ts): sums of Tg terms, exact enough in float32
        Q2 = Q2.sum(dim=1) if signs is None else (Q2 * signs.double()).sum(dim=1)
        P2 = P.pow(2).sum(dim=2).double().sum(dim=1)
        if scale is None:
            return P2 - 2 * Q2
        c = scale.double()
        return c * c * P2 - 2 * c * Q2

    @staticmethod
    def backward(ctx, grad_out):
        At, S, P, Qt = ctx.saved_tensors
        g = 4 * grad_out.to(At.dtype)
        c = torch.ones_like(g) if ctx.scale is None else ctx.scale.to(At.dtype)
        Qt = Qt * (-g * c).view(-1, 1, 1)
        if ctx.signs is not None:
            Qt = Qt * ctx.signs.to(At.dtype).view(1, 1, -1)
        grad_At = Qt @ S.T  # (B, Tg, N)
        grad_At.baddbmm_(P * (g * c * c).view(-1, 1, 1), At)
        return grad_At.transpose(1, 2), None, None, None


def _symmetric_product(X, blocks=3):
    """(B, T, N) -> (B, T, T) X X^T, each product of a block of rows with the rows up to
    it, then mirrored: (blocks + 1) / (2 blocks) of the multiply-adds of one product.
    Measured, three blocks took 16.6 ms against 23.1 ms at T = 517, N = 8160 (the matrix
    library's own product does not look for the symmetry)."""
    T = X.shape[1]
    if T < 32 * blocks:
        return X @ X.transpose(1, 2)
    P = X.new_empty(X.shape[0], T, T)
    bounds = [i * T // blocks for i in range(blocks + 1)]
    for lo, hi in zip(bounds, bounds[1:]):
        P[:, lo:hi, :hi] = X[:, lo:hi] @ X[:, :hi].transpose(1, 2)
        P[:, :lo, lo:hi] = P[:, lo:hi, :lo].transpose(1, 2)
    return P


# Directions a running factor keeps, per column asked for. Each merge costs the cube of twice
# this (its eigen-decomposition) and N times its square (its products). On 150 s of
# LibriSpeech speech (25840 frames, rank 256) what the final rank-256 cut leaves out is
# 1.0025 times what the exact top 256 leave out at 1.5, 1.011 at 1.25 and 1.12 at 1, where
# the best is itself 2.8e-9 of the Gram's squared norm: at any of them far below anything
# the loss at an optimum resolves (about 1e-4 of it). At 1 the factor costs 30% less (2-core
# Intel Xeon: 3.6 s against 5.1 s for that clip; 42 s against 58 s for a 30-minute style),
# which is what a long style costs a run beyond its content.
RUNNING_KEEP = 1.0


class StyleGram:
    """The style clip's Gram over time, G = S S^T (N x N, N = C*H, S its (N, Ts) features),
    held in the smallest form the style loss can use.

    factor: (N, r) with factor @ factor.T = G: S itself (exact, r = Ts), or G's best
            rank-r approximation from its eigen-decomposition (`rank`), which is what
            keeps the cost of a long style fixed; None when only the Gram is kept.
    gram:   (N, N) G itself, for `exact` long styles (no factor of bounded size is exact).
    squared_norm: ||G||_F^2 in float64 (the loss's constant term), exact where it can be
            had in the same pass (a style held whole, or the Gram), else ||factor^T factor||^2.
    signs:  None, or (r,) of +-1 for a target that is no Gram but a difference of them,
            factor diag(signs) factor^T (see corrected()).
    frames: Ts; C, H: the feature map's channels and bins.
    """

    def __init__(self, C, H, frames, squared_norm, factor=None, gram=None, signs=None):
        self.C, self.H, self.frames = C, H, frames
        self.squared_norm, self.factor, self.gram, self.signs = squared_norm, factor, gram, signs

    @property
    def rank(self):
        return self.factor.shape[1] if self.factor is not None else self.C * self.H

    @classmethod
    def from_features(cls, features, rank=None):
        """features (1, C, H, Ts), all frames at once. rank None (or >= Ts): exact, the
        factor is S; else the top `rank` eigen-directions of G, found from S^T S (Ts x Ts)."""
        _, C, H, Ts = features.shape
        S = features.flatten(1, 2)[0]
        # ||S S^T||^2 = ||S^T S||^2: float64, as the loss; symmetric, a third cheaper
        K = _symmetric_product(S.double().T[None])[0]
        squared_norm = K.pow(2).sum()
        if rank is None or Ts <= rank:
            return cls(C, H, Ts, squared_norm, factor=S)
        return cls(C, H, Ts, squared_norm, factor=_top_directions(S, rank, K))

    @classmethod
    def from_blocks(cls, blocks, rank=None):
        """blocks: an iterable of feature maps (1, C, H, b), the style's frames in order,
        so that no more than one block's features exist at a time.

        rank None: the exact Gram, summed block by block (N x N: 266 MB at N = 8160).
        rank r: a running factor: each block is appended to the factor kept so far and the
        pair is cut back to its top eigen-directions (RUNNING_KEEP times the asked rank,
        and at least 256: what is dropped along the way adds about a tenth to what the
        final cut drops, see RUNNING_KEEP); exact while the style has no more frames than
        that.
        """
        factor, gram, frames = None, None, 0
        for block in blocks:
            _, C, H, b = block.shape
            B = block.flatten(1, 2)[0]
            frames += b
            if rank is None:
                part = B @ B.T
                gram = part if gram is None else gram.add_(part)
                continue
            keep = max(round(RUNNING_KEEP * rank), 256)
            for part in B.split(keep, dim=1):  # merged `keep` frames at a time: cheapest
                if factor is None:
                    factor, values = part, None
                else:
                    factor, values = _merged(factor, values, part, keep)
        if rank is None:
            return cls(C, H, frames, gram.double().pow(2).sum(), gram=gram)
        return cls.of_factor(C, H, frames, _top_directions(factor, rank))

    @classmethod
    def of_factor(cls, C, H, frames, factor):
        """The Gram factor @ factor.T of a style of `frames` frames."""
        K = factor.double().T @ factor.double()  # ||F F^T||^2 = ||F^T F||^2
        return cls(C, H, frames, K.pow(2).sum(), factor=factor)

    def corrected(self, own, whole, rank=None):
        """The target a segment is refined toward: this Gram plus the segment's own Gram
        `own` (N, L) minus `whole`, the whole clip's StyleGram, as a signed factor
        [S, own, whole] diag(+, +, -). At the segment's present state its residual is
        then the whole clip's, so each segment answers for the clip (see train.py).
        rank: cut it to its best approximation of this rank (by the size of its
        eigenvalues, of either sign), as each loss evaluation costs in proportion to the
        factor's columns and [S, own, whole] has far more than the style alone."""
        M = torch.cat([self.factor, own, whole.factor], dim=1)
        signs = torch.cat([torch.ones(self.rank + own.shape[1]), -torch.ones(whole.rank)])
        signs = signs.to(M.device)
        if rank is not None and M.shape[1] > rank:
            M, signs = _top_signed_directions(M, signs, rank)
        K = M.double().T @ M.double()  # ||M s M^T||^2 = sum_ij s_i s_j (M^T M)_ij^2
        squared_norm = (K.pow(2) * signs.double()[:, None] * signs.double()[None]).sum()
        return StyleGram(self.C, self.H, self.frames, squared_norm, factor=M, signs=signs)

    def cut(self, rank):
        """This Gram's best approximation of rank `rank`, its factor's top eigen-directions
        (itself when its factor has no more columns): an evaluation against it costs in
        proportion to the columns."""
        if self.rank <= rank:
            return self
        return StyleGram.of_factor(self.C, self.H, self.frames,
                                   _top_directions(self.factor, rank))

    def scaled(self, scale):
        """The Gram times `scale` (a factor times sqrt(scale))."""
        factor = None if self.factor is None else self.factor * scale ** 0.5
        gram = None if self.gram is None else self.gram * scale
        return StyleGram(self.C, self.H, self.frames, self.squared_norm * scale ** 2,
                         factor, gram, self.signs)


def _top_directions(Z, keep, K=None):
    """(N, k) -> (N, min(k, keep)) Y with Y Y^T the best rank-`keep` approximation of
    Z Z^T: Y = Z V, V the top eigenvectors of K = Z^T Z (k x k, cheap when k << N; pass
    it when it is already at hand). Y's columns are orthogonal."""
    if Z.shape[1] <= keep:
        return Z
    K = (Z.T @ Z).double() if K is None else K
    return Z @ _top_eigenvectors(K, keep).to(Z.dtype)


SUBSPACE_FROM = 1024  # K larger than this: its top eigenvectors by subspace iteration
SUBSPACE_ITERATIONS = 6
SUBSPACE_EXTRA = 64  # columns iterated beyond those kept


def _top_eigenvectors(K, keep):
    """(k, k) symmetric positive semi-definite K -> (k, keep): its top eigenvectors.

    A full eigen-decomposition costs k^3: 4.7 s at k = 3446 (a 20-s clip's frames), more
    than the product that made K. Past SUBSPACE_FROM, subspace iteration from a fixed
    random start finds the top `keep` in 0.9 s instead: each round multiplies keep + 64
    columns by K and orthonormalises them, and the last is resolved by the eigen-
    decomposition of the small K restricted to them. Measured on a 20-s clip of speech
    and the 10-s music, the Gram that 6 rounds' directions keep leaves out 1.0001 and
    1.0000 times what the exact top 256 leave out (2 rounds: 1.025 and 1.010)."""
    k = K.shape[0]
    if k <= max(SUBSPACE_FROM, keep + SUBSPACE_EXTRA):
        return torch.linalg.eigh(K)[1][:, -keep:]  # ascending
    start = torch.Generator().manual_seed(0)
    Q = torch.randn(k, keep + SUBSPACE_EXTRA, generator=start, dtype=K.dtype).to(K.device)
    for _ in range(SUBSPACE_ITERATIONS):
        Q = torch.linalg.qr(K @ Q).Q
    _, vectors = torch.linalg.eigh(Q.T @ K @ Q)
    return Q @ vectors[:, -keep:]


def _merged(factor, values, part, keep):
    """The running factor (N, k) and a new block of features (N, m) -> (Y, values): Y (N,
    keep) with Y Y^T the best rank-`keep` approximation of factor factor^T + part part^T,
    and values (keep,) its eigenvalues, Y^T Y's diagonal.

    As _top_directions on [factor, part], at three quarters of its cost (a 150-s style's
    factor, 512 columns kept, in 9.8 s instead of 13.1 s): a factor that is itself such a
    Y has orthogonal columns, so `values` gives the first k x k block of K = [factor,
    part]^T [factor, part] for nothing (None: not yet known), and the new factor is made
    without copying the two side by side. K's eigenvectors are found in float64: its
    eigenvalues span more than float32 resolves (on that style, the 256th is 1.2e-5 of the
    first), and in float32 the factor left out 1.0015 times what the best of its rank
    leaves out, against 1.0003 (keeping 512 columns; at 384, 1.0076 against 1.0025)."""
    k = factor.shape[1]
    K = factor.new_empty(k + part.shape[1], k + part.shape[1])
    if values is None:
        K[:k, :k] = factor.T @ factor
    else:
        K[:k, :k] = torch.diag(values)
    K[:k, k:] = factor.T @ part
    K[k:, :k] = K[:k, k:].T
    K[k:, k:] = _symmetric_product(part.T[None])[0]
    values, vectors = torch.linalg.eigh(K.double())  # ascending
    top = vectors[:, -keep:].to(K.dtype)
    return factor @ top[:k] + part @ top[k:], values[-keep:].to(K.dtype)


def _top_signed_directions(M, signs, keep):
    """(N, k) M and (k,) signs +-1 -> (Y, s), Y (N, keep): Y diag(s) Y^T the best rank-`keep`
    approximation of the indefinite G = M diag(signs) M^T, its eigenvalues of largest size.

    With K = M^T M = V D V^T, M = Q D^(1/2) V^T for Q = M V D^(-1/2) (orthonormal), so G =
    Q B Q^T with B = D^(1/2) V^T diag(signs) V D^(1/2), k x k: G's eigenvalues are B's and
    its eigenvectors Q times B's; nothing N x N is formed. K in float32 (the cost, N k^2,
    of which the symmetric product spends two thirds), its eigen-decompositions in
    float64; directions of M below 1e-6 of its largest, lost to float32 anyway, are left
    out."""
    K = _symmetric_product(M.T[None])[0].double()
    d, V = torch.linalg.eigh(K)
    kept = d > d[-1] * 1e-6
    d, V = d[kept], V[:, kept]
    root = d.sqrt()
    B = (V * root).T @ ((V * root) * signs.double()[:, None])
    values, U = torch.linalg.eigh(B)
    top = values.abs().argsort(descending=True)[:keep]
    Y = M @ ((V / root) @ (U[:, top] * values[top].abs().sqrt())).to(M.dtype)
    return Y, values[top].sign().to(signs.dtype)


class StyleLoss(nn.Module):
    """The reference's style loss against one style clip, for a batch of generated maps.

    Equal to style_loss_textbook (tests check values and gradients), in whichever exact
    form is cheaper for the clip lengths at hand; `form` forces one ("time" or "gram").
    `style` is the style's feature map (1, C, H, Ts), or a StyleGram (a long style, or a
    factor of bounded rank). `normalize` divides each Gram by its clip's frame count (an
    option; the reference does not, so its style loss cannot reach zero when the lengths
    differ).
    """

    def __init__(self, style, gen_frames, form="auto", normalize=False):
        super().__init__()
        if torch.is_tensor(style):
            style = StyleGram.from_features(style)
        if normalize:
            style = style.scaled(1.0 / style.frames)
        self.normalize = normalize
        rows = style.C * style.H
        if form == "auto":
            form = cheaper_style_form(gen_frames, style.rank, rows)
        if style.factor is None:
            form = "gram"  # an exact long style is kept only as its Gram
        self.form = form
        self.register_buffer("const", style.squared_norm)
        self.register_buffer("signs", style.signs)
        if form == "time":
            self.register_buffer("S", style.factor)
        elif style.gram is not None:
            self.register_buffer("gram", style.gram)
        else:
            signed = style.factor if style.signs is None else style.factor * style.signs
            self.register_buffer("gram", signed @ style.factor.T)

    def forward(self, gen_features, frames=None, whole=None, share=None, target=None):
        """(B, C, H, T) -> (B,) losses. `frames` (B,): each clip's true frame count in a
        zero-padded batch. `target` (B,): set each clip against this multiple of the
        style's Gram (a style counted as shorter or longer than it is; see train.py's
        -style_cap and -style_floor).

        Segments of longer clips: `whole` (B,) is the frame count of the clip each is cut
        from, and `share` (B,) the part of the style's Gram it is to carry (by default
        frames / whole). A segment's Gram divided by its share is set against the style's
        Gram, with the whole clip's normalisation: it is scored as the whole clip would
        be if every segment were like it, and its content and style keep the balance they
        have in the whole clip. With share = frames / whole: the reference's loss of a
        clip of `whole` frames made of copies of the segment.
        """
        _, C, H, _ = gen_features.shape
        frames = _frame_counts(gen_features, frames)
        A = gen_features.flatten(1, 2)  # (B, N, Tg)
        W, weight, scale = frames, None, None  # the Gram is taken of A * sqrt(scale)
        if whole is not None:
            share = frames / whole if share is None else share
            scale = 1 / share
            W, weight = whole, share * whole / frames
        if target is not None:  # ||G - a S||^2 = a^2 ||G / a - S||^2, the style kept as it is
            scale = 1 / target if scale is None else scale / target
            weight = target ** 2 if weight is None else weight * target ** 2
        if self.normalize:
            scale = 1 / W if scale is None else scale / W
        if self.form == "time":
            squared = _TimeFormStyle.apply(A, self.S, self.signs, scale) + self.const  # float64
        else:
            if scale is not None:
                A = A * scale.sqrt().view(-1, 1, 1)
            diff = A @ A.transpose(1, 2) - self.gram
            squared = diff.pow(2).sum(dim=(1, 2), dtype=torch.float64)
        loss = squared / (4 * C * C * H * W)
        return loss if weight is None else loss * weight
