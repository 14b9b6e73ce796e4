"""lbfgs.LBFGS: the line search's interpolation by hand, and the whole method against
torch.optim.LBFGS, which implements the same algorithm."""
import pytest
import torch

import lbfgs


def rosenbrock(x):
    """The chained Rosenbrock function: minimum 0 at x = 1."""
    return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()


def test_cubic_minimum_by_hand():
    # f = t^3 - 3t: f(0) = 0, f'(0) = -3; f(2) = 2, f'(2) = 9; its minimum is at t = 1
    assert lbfgs.cubic_minimum(0.0, 0.0, -3.0, 2.0, 2.0, 9.0) == pytest.approx(1.0)
    assert lbfgs.cubic_minimum(2.0, 2.0, 9.0, 0.0, 0.0, -3.0) == pytest.approx(1.0)
    # kept inside the bounds given
    assert lbfgs.cubic_minimum(0.0, 0.0, -3.0, 2.0, 2.0, 9.0, 1.5, 4.0) == 1.5
    # f = -t^3 has no minimum between its points: the middle
    assert lbfgs.cubic_minimum(-1.0, 1.0, -3.0, 1.0, -1.0, -3.0) == 0.0


def _points(minimise, budget):
    """The (loss, x) of every evaluation, from the textbook start, up to `budget`."""
    x = torch.tensor([-1.2, 1.0, 0.5, -0.5, 2.0], dtype=torch.float64, requires_grad=True)
    seen = []

    def closure():
        x.grad = None
        loss = rosenbrock(x)
        loss.backward()
        seen.append((loss.item(), x.detach().clone()))
        if len(seen) == budget:
            raise StopIteration
        return loss
    try:
        minimise(x, closure)
    except StopIteration:
        pass
    return seen


def test_the_same_iterates_as_torch_lbfgs():
    """Each evaluation at the same point, to rounding, and the same stop: L-BFGS's
    results measured before lbfgs.py (torch's optimiser then) still stand."""
    ours = _points(lambda x, closure: lbfgs.LBFGS(x, history=50).minimise(closure), 500)

    def torch_lbfgs(x, closure):
        torch.optim.LBFGS([x], history_size=50, line_search_fn="strong_wolfe",
                          max_iter=10 ** 6, max_eval=500).step(closure)
    theirs = _points(torch_lbfgs, 500)
    assert len(ours) == len(theirs) < 100  # it stopped by itself, at the same evaluation
    for (loss, x), (their_loss, their_x) in zip(ours, theirs):
        assert loss == pytest.approx(their_loss, rel=1e-6, abs=1e-12)
        torch.testing.assert_close(x, their_x, rtol=0, atol=1e-8)
    assert ours[-1][0] < 1e-9
    torch.testing.assert_close(ours[-1][1], torch.ones(5, dtype=torch.float64), atol=1e-4,
                               rtol=0)


def _quadratic_run(**options):
    """L-BFGS on 0.5 |x|^2 from x = (10, 20, 30, 40) (the minimum is a gradient step of 1);
    returns the optimiser and the number of evaluations of its first line search."""
    x = torch.arange(10.0, 50.0, 10.0, dtype=torch.float64, requires_grad=True)
    opt, evaluations = lbfgs.LBFGS(x, **options), []

    def closure():
        if opt.first_taken is not None:
            raise StopIteration  # the first line search is over
        x.grad = None
        loss = 0.5 * x.pow(2).sum()
        loss.backward()
        evaluations.append(loss.item())
        return loss
    try:
        opt.minimise(closure)
    except StopIteration:
        pass
    return opt, len(evaluations) - 1  # less the start's


def test_a_first_step_given_is_tried_first_and_the_step_taken_is_kept():
    """Without history the first trial is the short gradient step min(1, 1/|g|_1) = 0.01
    here, and the search grows it until the strong Wolfe conditions hold; given
    first_step=1 (the step that lands on the minimum), one evaluation does. first_taken is
    the step the search took."""
    plain, plain_evaluations = _quadratic_run()
    given, given_evaluations = _quadratic_run(first_step=1.0)
    assert given_evaluations == 1 < plain_evaluations
    assert given.first_taken == 1.0
    assert 0.01 < plain.first_taken <= 1.5


def test_a_first_step_is_used_once_not_after_a_reset():
    """After an overflow train.py resets L-BFGS, whose next start must be the short
    gradient step again, not the long step that overflowed."""
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = lbfgs.LBFGS(x, first_step=5.0)
    trials = []

    def closure():
        x.grad = None
        loss = 0.5 * x.pow(2).sum()
        loss.backward()
        trials.append(x.detach().clone())
        if len(trials) == 2:
            raise OverflowError  # as train.py's closure raises at a non-finite loss
        return loss
    with pytest.raises(OverflowError):
        opt.minimise(closure)
    torch.testing.assert_close(trials[1], torch.full((3,), -4.0, dtype=torch.float64))
    opt.reset()
    with torch.no_grad():
        x.fill_(1.0)
    trials.clear()
    with pytest.raises(OverflowError):
        opt.minimise(closure)
    # min(1, 1/|g|_1) = 1/3: x = 1 - 1/3
    torch.testing.assert_close(trials[1], torch.full((3,), 2 / 3, dtype=torch.float64))


def _defeated_search(stop_at_rounding):
    """One L-BFGS run on a loss that falls at slope -1e-3 but whose every point other than
    the start comes out 1e-3 higher, as rounding would put it; returns the evaluations
    after the start's and where x ended."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    start, evaluations = x.detach().clone(), []

    def closure():
        x.grad = None
        loss = -1e-3 * x.sum()
        loss.backward()
        evaluations.append(x.item())
        return loss + (0.0 if torch.equal(x.detach(), start) else 1e-3)
    lbfgs.LBFGS(x, stop_at_rounding=stop_at_rounding).minimise(closure)
    return len(evaluations) - 1, x.item()


def test_a_search_that_rounding_defeats_gives_up_at_once_when_asked():
    """The first trial (the gradient step, x = 1e-3) rose although its slope is the start's:
    rounding, which no shorter step can beat. With stop_at_rounding L-BFGS gives up there;
    without, the search zooms on toward t = 0, to the same end."""
    assert lbfgs.rounding(1.0, -0.95, 0.0, -1.0) and lbfgs.rounding(1.0, -0.9, 0.0, -1.0)
    assert not lbfgs.rounding(1.0, -0.5, 0.0, -1.0)  # flatter: curvature can explain a rise
    assert not lbfgs.rounding(-1.0, -0.95, 0.0, -1.0)  # it fell
    stopped, x_stopped = _defeated_search(True)
    zoomed, x_zoomed = _defeated_search(False)
    assert stopped == 1 < zoomed
    assert x_stopped == 0.0 and abs(x_zoomed) < 1e-9  # nowhere better was found
