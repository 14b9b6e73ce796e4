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
        """(B, F, T) -> (B, C, F - kh + 1, T)."""
        return F.leaky_relu(self.conv(spectrogram.unsqueeze(1)), 0.2)

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
    # Summed into float64: L-BFGS compares successive losses, and float32's rounding at
    # the loss's size would hide the small changes near a flat start and end it early.
    squared = (gen_features - content_features).pow(2).sum(dim=(1, 2, 3), dtype=torch.float64)
    return squared / (4 * C * H * frames)


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
    """sum over the batch of ||A^T A||^2 - 2 ||S^T A||^2, with the gradient written out.

    For A (B, N, Tg) and the style S (N, Ts): [A S]^T A stacks P = A^T A over Q = S^T A,
    one matrix product; the gradient 4 A P - 4 S Q = 4 [A S] [P; -Q] is one more. Autograd
    would spend three products on the same, as it cannot see that P is symmetric.
    """

    @staticmethod
    def forward(ctx, A, S):
        AS = torch.cat([A, S.expand(A.shape[0], -1, -1)], dim=2)  # (B, N, Tg + Ts)
        PQ = AS.transpose(1, 2) @ A  # (B, Tg + Ts, Tg)
        Tg = A.shape[2]
        P, Q = PQ[:, :Tg], PQ[:, Tg:]
        ctx.save_for_backward(AS, PQ)
        ctx.Tg = Tg
        # Summed in float64: the loss is a small difference of these large sums.
        return (P.double().pow(2).sum(dim=(1, 2)) - 2 * Q.double().pow(2).sum(dim=(1, 2)))

    @staticmethod
    def backward(ctx, grad_out):
        AS, PQ = ctx.saved_tensors
        PQ = PQ.clone()
        PQ[:, ctx.Tg:].neg_()
        grad_A = (4 * grad_out).to(AS.dtype).view(-1, 1, 1) * (AS @ PQ)
        return grad_A, None


class StyleLoss(nn.Module):
    """The reference's style loss against one style clip, for a batch of generated maps.

    Equal to style_loss_textbook (tests check values and gradients), in whichever exact
    form is cheaper for the clip lengths at hand; `form` forces one ("time" or "gram").
    `normalize` divides each Gram by its clip's frame count (an option; the reference
    does not, so its style loss cannot reach zero when the lengths differ).
    """

    def __init__(self, style_features, gen_frames, form="auto", normalize=False):
        super().__init__()
        _, C, H, Ts = style_features.shape
        S = style_features.flatten(1, 2)[0]  # (N, Ts)
        self.form = cheaper_style_form(gen_frames, Ts, C * H) if form == "auto" else form
        self.normalize = normalize
        self.style_scale = 1.0 / Ts if normalize else 1.0
        if self.form == "time":
            # ||S S^T||^2 = ||S^T S||^2, constant: computed once, in float64 because the
            # loss is a difference of large numbers.
            const = (S.double().T @ S.double()).pow(2).sum() * self.style_scale ** 2
            self.register_buffer("S", S)
            self.register_buffer("const", const)
        else:
            self.register_buffer("gram", (S @ S.T) * self.style_scale)

    def forward(self, gen_features, frames=None):
        _, C, H, _ = gen_features.shape
        frames = _frame_counts(gen_features, frames)
        A = gen_features.flatten(1, 2)  # (B, N, Tg)
        if self.normalize:
            A = A / frames.sqrt().view(-1, 1, 1)
        if self.form == "time":
            S = self.S * self.style_scale ** 0.5
            squared = _TimeFormStyle.apply(A, S) + self.const  # float64, as content_loss
        else:
            diff = A @ A.transpose(1, 2) - self.gram
            squared = diff.pow(2).sum(dim=(1, 2), dtype=torch.float64)
        return squared / (4 * C * C * H * frames)
