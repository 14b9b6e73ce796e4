"""L-BFGS with a strong Wolfe line search, on one tensor of parameters.

train.py's default optimiser. It is the method torch.optim.LBFGS implements (Nocedal and
Wright's Algorithms 7.4, 3.5 and 3.6: the two-loop recursion over the last `history`
steps, a line search that brackets a step meeting the strong Wolfe conditions and zooms
in by cubic interpolation), written here because anything built on torch.optim's base
class imports torch._dynamo on first use: 1.25 s of every run on the 2-core CPU, a sixth
of a short clip's whole run.

Usage: `opt = LBFGS(x)`; `opt.minimise(closure)`, where closure() evaluates the loss at
x's current value, leaves its gradient in x.grad and returns the loss. minimise returns
when it finds no further descent; a closure that raises ends it at once (a budget, a
stopping rule, Ctrl-C), x then holding the last point tried.
"""
import math

import torch

C1, C2 = 1e-4, 0.9  # sufficient decrease; curvature (0.9: quasi-Newton steps are long)
LINE_SEARCH_EVALUATIONS = 25  # at most, per line search
EXTRAPOLATE = 10  # a bracketing step grows the trial step at most this many times


class LBFGS:
    """x: the parameter tensor (any shape, contiguous), optimised in place.

    `lr` scales the first step of a start without history (as torch's, the gradient
    step min(1, 1 / |g|_1) lr) and is the step every later line search tries first.
    `max_iterations` ends minimise() after that many iterations (tests use it to make
    L-BFGS give up early). `first_step`: the first trial step, once, in place of that
    gradient step. `stop_at_rounding`: give up at the first line search that the loss's
    rounding defeats (see rounding()), for a run whose end matters less than its cost.
    Otherwise such a search zooms on, and a trial that rounding happens to put lower
    lets L-BFGS go on: measured on music segments refined from near their optimum, a run
    stopped at rounding ended 2% higher."""

    def __init__(self, x, lr=1.0, history=50, tolerance_grad=1e-7, tolerance_change=1e-9,
                 max_iterations=None, first_step=None, stop_at_rounding=False):
        assert x.is_contiguous()
        self.x, self.lr, self.history = x, lr, history
        self.stop_at_rounding = stop_at_rounding
        self.first_step, self.first_taken = first_step, None
        self.flat = x.detach().view(-1)  # x's storage, written without autograd
        self.tolerance_grad, self.tolerance_change = tolerance_grad, tolerance_change
        self.max_iterations = max_iterations
        self.reset()

    def reset(self):
        """Forget the history: the next step is a short gradient step."""
        self.steps, self.changes, self.inverse_curvatures = [], [], []
        self.scale = 1.0  # of the initial inverse Hessian: s.y / y.y of the latest step

    def _evaluate(self, closure, x0, t, d):
        """The loss and (flat) gradient at x0 + t d, which x is left at."""
        self.move(x0, t, d)
        return evaluate(closure), self.x.grad.reshape(-1).clone()

    def move(self, x0, t, d):
        """x = x0 + t d. (A step too long for float32 makes x infinite, as it should,
        where add's alpha=t would raise.)"""
        torch.mul(d, t, out=self.flat)
        self.flat.add_(x0)

    def direction(self, g):
        """-H g, H the inverse Hessian that the history and the scale make (the two-loop
        recursion): newest step first down, oldest first back up."""
        q, alphas = g.neg(), []
        for s, y, rho in zip(reversed(self.steps), reversed(self.changes),
                             reversed(self.inverse_curvatures)):
            alpha = rho * float(s.dot(q))
            add_multiple(q, y, -alpha)
            alphas.append(alpha)
        r = q.mul_(self.scale)
        for s, y, rho, alpha in zip(self.steps, self.changes, self.inverse_curvatures,
                                    reversed(alphas)):
            add_multiple(r, s, alpha - rho * float(y.dot(r)))
        return r

    def remember(self, s, y):
        """Add the step s and the gradient's change y along it, if the curvature y.s is
        positive (else the inverse Hessian would not stay positive definite)."""
        ys = float(y.dot(s))
        if not 1e-10 < ys < math.inf:  # NaN fails too
            return
        if len(self.steps) == self.history:
            del self.steps[0], self.changes[0], self.inverse_curvatures[0]
        self.steps.append(s)
        self.changes.append(y)
        self.inverse_curvatures.append(1.0 / ys)
        self.scale = ys / float(y.dot(y))

    def minimise(self, closure):
        x = self.flat
        loss = evaluate(closure)
        g = self.x.grad.reshape(-1).clone()
        iterations = 0
        while self.max_iterations is None or iterations < self.max_iterations:
            if float(g.abs().max()) <= self.tolerance_grad:
                return
            d = self.direction(g)
            first = not self.steps and self.first_taken is None
            if self.steps:
                t = self.lr
            elif first and self.first_step is not None:  # once: not after an overflow
                t, self.first_step = self.first_step, None
            else:  # nothing known of the curvature: a gradient step of length <= lr
                t = min(1.0, 1.0 / float(g.abs().sum())) * self.lr
            slope = float(g.dot(d))
            if slope > -self.tolerance_change:  # not a descent direction
                return
            x0 = x.clone()
            new_loss, new_g, t = self.line_search(closure, x0, loss, g, t, d, slope)
            if first:
                self.first_taken = t
            self.move(x0, t, d)  # the point chosen, not always the last tried
            iterations += 1
            self.remember(d * t, new_g - g)
            change, loss, g = abs(new_loss - loss), new_loss, new_g
            if float(d.abs().max()) * t <= self.tolerance_change or change < self.tolerance_change:
                return

    def line_search(self, closure, x0, f0, g0, t, d, slope0):
        """A step t along d meeting the strong Wolfe conditions, or the best found in
        LINE_SEARCH_EVALUATIONS evaluations. Returns (loss, flat gradient, t)."""
        longest = float(d.abs().max())
        # bracketing: grow the step until it overshoots (the loss rises or its slope
        # turns positive), or meets the conditions outright
        prev = (0.0, f0, g0, slope0)
        f, g = self._evaluate(closure, x0, t, d)
        slope, evaluations = float(g.dot(d)), 1
        while True:
            if self.stop_at_rounding and rounding(f, slope, f0, slope0):
                return prev[1], prev[2], prev[0]
            rose = f > f0 + C1 * t * slope0 or (evaluations > 1 and f >= prev[1])
            if not rose and abs(slope) <= -C2 * slope0:
                return f, g, t  # the strong Wolfe conditions hold
            if rose or slope >= 0:  # overshot: a minimiser lies between prev and t
                low, high = prev, (t, f, g, slope)
                break
            if evaluations == LINE_SEARCH_EVALUATIONS:
                return f, g, t  # the loss fell at every trial: keep the longest step
            step = cubic_minimum(prev[0], prev[1], prev[3], t, f, slope,
                                 t + 0.01 * (t - prev[0]), EXTRAPOLATE * t)
            prev = (t, f, g, slope)
            t = step
            f, g = self._evaluate(closure, x0, t, d)
            slope, evaluations = float(g.dot(d)), evaluations + 1
        # zoom between the two ends, `low` the one with the lower loss
        if high[1] < low[1]:
            low, high = high, low
        near_end = False
        while evaluations < LINE_SEARCH_EVALUATIONS:
            width = abs(high[0] - low[0])
            if width * longest < self.tolerance_change:
                break
            t = cubic_minimum(low[0], low[1], low[3], high[0], high[1], high[3])
            # an interpolated step close to an end gains little: allow it once, then push
            # it a tenth of the width inside
            left, right = min(low[0], high[0]), max(low[0], high[0])
            margin = 0.1 * width
            if min(right - t, t - left) < margin:
                if near_end or t >= right or t <= left:
                    t = right - margin if right - t < t - left else left + margin
                    near_end = False
                else:
                    near_end = True
            else:
                near_end = False
            f, g = self._evaluate(closure, x0, t, d)
            slope, evaluations = float(g.dot(d)), evaluations + 1
            if self.stop_at_rounding and rounding(f, slope, f0, slope0):
                break
            if f > f0 + C1 * t * slope0 or f >= low[1]:
                high = (t, f, g, slope)
            else:
                if abs(slope) <= -C2 * slope0:
                    return f, g, t
                if slope * (high[0] - low[0]) >= 0:
                    high = low
                low = (t, f, g, slope)
        return low[1], low[2], low[0]


def rounding(f, slope, f0, slope0):
    """Whether the loss f at a trial step rose above the start's f0 although its slope there
    is still as steep as the curvature condition's bound (C2 slope0): for a smooth loss
    that falls at that slope all the way, only rounding in the loss can do that, and any
    shorter step gains less than the rounding. train.py's style loss is a difference of
    sums thousands of times its own size, and at the end of a segment's first pass its
    rounding was measured at 1e-4 to 1e-3 of it: the search that failed there went on
    zooming to steps of 1e-7, 3 to 5 more evaluations as unable to tell a fall from it."""
    return f > f0 and slope <= C2 * slope0


def add_multiple(v, w, a):
    """v += a w in place. add_'s alpha must fit v's dtype; a larger multiple (of a
    history gone out of range) makes v infinite instead, and the loss then says so."""
    if abs(a) < torch.finfo(v.dtype).max:
        v.add_(w, alpha=a)
    else:
        v.add_(w * a)


def evaluate(closure):
    """closure()'s loss as a float (a tensor's detached first)."""
    loss = closure()
    return float(loss.detach() if isinstance(loss, torch.Tensor) else loss)


def cubic_minimum(t1, f1, slope1, t2, f2, slope2, lower=None, upper=None):
    """The minimiser of the cubic through (t1, f1) and (t2, f2) with those slopes, kept
    within [lower, upper] (by default the interval between t1 and t2); the interval's
    middle if the cubic has no minimum."""
    if lower is None:
        lower, upper = min(t1, t2), max(t1, t2)
    d1 = slope1 + slope2 - 3 * (f1 - f2) / (t1 - t2)
    square = d1 * d1 - slope1 * slope2
    d2 = math.copysign(math.sqrt(max(square, 0.0)), t2 - t1)
    denominator = slope2 - slope1 + 2 * d2
    if square < 0 or denominator == 0:
        return (lower + upper) / 2
    t = t2 - (t2 - t1) * (slope2 + d2 - d1) / denominator
    return min(max(t, lower), upper)
