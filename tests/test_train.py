"""Optimisation loop (core/train.py): known-truth recovery, stopping, NaN, checkpoints, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blase_specutils.core.lineforest import LineForest
from blase_specutils.core.train import (
    adam,
    load_checkpoint,
    optimize,
    resolve_device,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: intra-op threads only add contention (50x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WAVELENGTH = np.arange(8600.0, 8603.0, 0.01)
#: windows covering the grid, so a model with the true parameters reproduces the target exactly
COVER_ALL = {"tolerance": 1e-30, "max_half_width": 1e4, "min_pixels": 2 * WAVELENGTH.size}


def _truth(seed: int = 0, n: int = 6):
    rng = np.random.default_rng(seed)
    center = np.sort(rng.uniform(8600.2, 8602.8, n))
    amplitude = rng.uniform(0.005, 0.02, n)
    sigma = rng.uniform(0.01, 0.04, n)
    gamma = rng.uniform(0.01, 0.03, n)
    truth = LineForest(center, amplitude, sigma, gamma, dtype=torch.float64)
    with torch.no_grad():
        target = truth(truth.make_layout(WAVELENGTH, **COVER_ALL))
    start = amplitude * rng.uniform(0.7, 1.3, n)
    return (center, amplitude, sigma, gamma), start, target


def _problem(seed=0, *, trainable=("amplitude",), dtype=torch.float64):
    (center, amplitude, sigma, gamma), start, target = _truth(seed)
    model = LineForest(center, start, sigma, gamma, trainable=trainable, dtype=dtype)
    layout = model.make_layout(WAVELENGTH, **COVER_ALL)
    target = target.to(dtype)

    def loss_fn():
        return torch.mean((model(layout) - target) ** 2)

    return model, loss_fn, amplitude


# --------------------------------------------------------------------- recovering truth
def test_adam_recovers_true_amplitudes():
    model, loss_fn, amplitude = _problem()
    start_error = np.max(np.abs(model.line_properties()["amplitude"] / amplitude - 1))
    assert start_error > 0.1
    history = optimize(model, loss_fn, epochs=300, learning_rate=0.05, rtol=0, progress=False)
    assert (
        history.stop_reason == "max_epochs" and history.epochs == 300 and len(history.loss) == 300
    )
    recovered = model.line_properties()["amplitude"]
    # measured: 2.7e-8 relative after 300 epochs
    np.testing.assert_allclose(recovered, amplitude, rtol=1e-3)
    assert history.loss[-1] < 1e-6 * history.loss[0]


def test_lbfgs_recovers_true_amplitudes():
    model, loss_fn, amplitude = _problem(seed=1)

    # L-BFGS's own tolerances (tolerance_grad=1e-7) are absolute: scale the tiny MSE up
    def scaled():
        return 1e4 * loss_fn()

    history = optimize(
        model, scaled, epochs=10, learning_rate=1.0, optimizer="lbfgs", rtol=0, progress=False
    )
    # measured: 1.7e-6 relative after 10 L-BFGS epochs (20 iterations each)
    np.testing.assert_allclose(model.line_properties()["amplitude"], amplitude, rtol=1e-4)
    assert history.loss[-1] < history.loss[0]


def test_lbfgs_until_converged_stops_on_lbfgs_own_tolerances():
    """The one L-BFGS driver with BlaseFitter's settings: end-of-epoch losses, and a stop
    when a step ends before its 20 iterations (here a quadratic, solved in one epoch)."""

    class Quadratic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = torch.nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))

    target = torch.tensor([1.0, 0.5], dtype=torch.float64)
    weights = torch.tensor([1.0, 10.0], dtype=torch.float64)

    def runs(**options):
        module = Quadratic()

        def loss_fn():
            return torch.sum(weights * (module.x - target) ** 2)

        history = optimize(
            module, loss_fn, epochs=50, learning_rate=1.0, optimizer="lbfgs", rtol=0,
            progress=False, num_threads=None, **options,
        )
        return module, history

    module, history = runs(
        lbfgs_options={"tolerance_grad": 1e-12, "tolerance_change": 1e-15, "history_size": 5},
        lbfgs_until_converged=True,
    )
    assert history.stop_reason == "converged" and history.epochs < 5
    torch.testing.assert_close(module.x.detach(), target, rtol=0, atol=1e-8)
    assert history.loss[-1] < 1e-14  # the loss where the last step ended, not where it began
    # without it: the losses are those at each step's start, and all 50 epochs run
    _, plain = runs()
    assert plain.stop_reason == "max_epochs" and plain.epochs == 50
    assert plain.loss[0] == pytest.approx(4.0 + 10.0 * 2.5**2)


def test_stopping_rule_converges_before_max_epochs():
    model, loss_fn, amplitude = _problem(seed=2)
    history = optimize(
        model, loss_fn, epochs=5000, learning_rate=0.02, rtol=1e-3, patience=20, progress=False
    )
    assert history.stop_reason == "converged"
    assert history.epochs < 5000 and len(history.loss) == history.epochs
    # the rule as documented: the best loss of the last `patience` epochs improves on the
    # best loss before them by less than rtol, and it did not hold one epoch earlier
    loss = np.array(history.loss)
    before, recent = loss[:-20].min(), loss[-20:].min()
    assert before - recent <= 1e-3 * before
    before, recent = loss[:-21].min(), loss[-21:-1].min()
    assert before - recent > 1e-3 * before
    assert history.wall_time > 0


def test_stopping_rule_ignores_oscillations():
    model, loss_fn, amplitude = _problem()
    history = optimize(
        model, loss_fn, epochs=2000, learning_rate=0.05, rtol=1e-8, patience=20, progress=False
    )
    # Regression: a rule comparing the current loss with the loss `patience` epochs ago
    # stopped this run at epoch 27 ("converged", amplitudes 5 % off) on an Adam oscillation.
    loss = np.array(history.loss)
    if history.stop_reason == "converged":
        best_before = loss[:-20].min()
        best_recent = loss[-20:].min()
        assert best_recent >= (1 - 1e-8) * best_before, (
            "stopped while the best loss was still improving"
        )
    np.testing.assert_allclose(model.line_properties()["amplitude"], amplitude, rtol=1e-3)


def test_time_limit_stops():
    model, loss_fn, _ = _problem()
    history = optimize(model, loss_fn, epochs=10**6, rtol=0, time_limit=0.2, progress=False)
    assert history.stop_reason == "time_limit"
    assert 0 < history.epochs < 10**6


def test_after_step_called_every_epoch():
    model, loss_fn, _ = _problem()
    seen = []
    optimize(model, loss_fn, epochs=7, rtol=0, progress=False, after_step=seen.append)
    assert seen == list(range(1, 8))


def test_progress_bar_does_not_break_training(capsys):
    model, loss_fn, _ = _problem()
    history = optimize(model, loss_fn, epochs=12, rtol=0, progress=True, description="test")
    assert history.epochs == 12


def test_only_trainable_parameters_change():
    model, loss_fn, _ = _problem(trainable=("amplitude",))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert set(frozen) == {"center_shift", "ln_sigma", "ln_gamma"}
    optimize(model, loss_fn, epochs=20, rtol=0, progress=False)
    for name, before in frozen.items():
        assert torch.equal(getattr(model, name), before)


# --------------------------------------------------------------------------- failures
def test_nan_loss_raises_floating_point_error():
    model, loss_fn, _ = _problem()
    calls = {"n": 0}

    def poisoned():
        calls["n"] += 1
        loss = loss_fn()
        return loss * float("nan") if calls["n"] == 5 else loss

    with pytest.raises(FloatingPointError, match="loss became nan at epoch 5"):
        optimize(model, poisoned, epochs=50, rtol=0, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": -1}, "epochs must be non-negative"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"optimizer": "sgd"}, "optimizer must be 'adam' or 'lbfgs'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    model, loss_fn, _ = _problem()
    with pytest.raises(ValueError, match=match):
        optimize(model, loss_fn, progress=False, **kwargs)


def test_nothing_to_train_raises():
    model, loss_fn, _ = _problem()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        optimize(model, loss_fn, progress=False)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            resolve_device("cuda")


# ------------------------------------------------------------------------ checkpoints
def test_checkpoint_written_with_state(tmp_path):
    model, loss_fn, _ = _problem()
    ckpt = tmp_path / "run.pt"
    history = optimize(
        model, loss_fn, epochs=30, rtol=0, checkpoint=ckpt, checkpoint_every=10, progress=False
    )
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 30
    np.testing.assert_array_equal(state["loss"].numpy(), history.loss)
    for name, value in model.state_dict().items():
        assert torch.equal(state["module"][name], value)
    assert list(tmp_path.iterdir()) == [ckpt]  # no temporary file left behind


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model, loss_fn, _ = _problem()
    ckpt = tmp_path / "run.pt"
    optimize(model, loss_fn, epochs=10, rtol=0, checkpoint=ckpt, progress=False)
    good = ckpt.read_bytes()

    def crash_midway(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, model, opt, 20, [1.0])
    assert ckpt.read_bytes() == good  # the previous checkpoint survived intact
    assert load_checkpoint(ckpt)["epoch"] == 10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_resume_is_bit_identical_to_uninterrupted_run(tmp_path, dtype):
    everything = ("center", "amplitude", "sigma", "gamma")
    model_a, loss_a, _ = _problem(trainable=everything, dtype=dtype)
    history_a = optimize(model_a, loss_a, epochs=100, rtol=0, progress=False)

    ckpt = tmp_path / "run.pt"
    model_b, loss_b, _ = _problem(trainable=everything, dtype=dtype)
    history_b = optimize(model_b, loss_b, epochs=50, rtol=0, checkpoint=ckpt, progress=False)
    assert history_b.epochs == 50 and load_checkpoint(ckpt)["epoch"] == 50

    model_c, loss_c, _ = _problem(
        trainable=everything, dtype=dtype
    )  # a fresh process would start here
    history_c = optimize(
        model_c, loss_c, epochs=100, rtol=0, resume=ckpt, checkpoint=ckpt, progress=False
    )
    assert history_c.epochs == 100
    assert history_c.loss == history_a.loss  # exact float equality, all 100 epochs
    for name, value in model_a.state_dict().items():
        assert torch.equal(model_c.state_dict()[name], value), name
    # and the resumed run really continued (it did not redo the first 50 epochs)
    assert not torch.equal(model_b.ln_amplitude, model_a.ln_amplitude)


class _Exploit:
    """Unpickling this would create a file: a checkpoint must never run code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_checkpoint_uses_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pt"
    torch.save({"module": {}, "payload": _Exploit(marker)}, bad)
    with pytest.raises(ValueError, match="objects other than tensors"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_cuda_graph_flag_is_a_no_op_on_cpu():
    # The CUDA-graph path only engages for CUDA parameters; on CPU the run is bit-identical.
    torch.manual_seed(0)
    results = []
    for flag in (False, True):
        weights = torch.nn.Parameter(torch.linspace(0.0, 1.0, 16, dtype=torch.float64))
        module = torch.nn.Module()
        module.weights = weights
        target = torch.linspace(1.0, 2.0, 16, dtype=torch.float64)
        optimize(
            module,
            lambda: torch.sum((module.weights - target) ** 2),
            epochs=20,
            rtol=0,
            progress=False,
            cuda_graph=flag,
        )
        results.append(module.weights.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], torch.linspace(0.0, 1.0, 16, dtype=torch.float64))


def test_history_reads_as_the_loss_per_epoch():
    module = torch.nn.Module()
    module.weights = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    history = optimize(
        module, lambda: torch.sum((module.weights - 1.0) ** 2), epochs=12, rtol=0, progress=False
    )
    assert len(history) == 12 == history.epochs
    assert history[-1] == history.loss[-1] < history[0]
    np.testing.assert_array_equal(np.asarray(history), np.array(history.loss))
    assert list(history) == history.loss


def test_a_relayout_restarts_the_convergence_test():
    """A loss that jumps up when the model changes under it (as a re-layout of the line
    windows does) stopped the run at once; an after_step returning True restarts the
    comparison from there."""

    def run(signal: bool):
        weight = torch.nn.Parameter(torch.tensor(3.0))
        module = torch.nn.Module()
        module.weight = weight
        state = {"offset": 0.0}

        def loss_fn():
            return (weight - 1.0) ** 2 + state["offset"]

        def after_step(epoch):
            if epoch == 20:
                state["offset"] = 5.0  # the model changed: every later loss is higher
                return signal
            return False

        return optimize(
            module,
            loss_fn,
            epochs=400,
            learning_rate=0.05,
            rtol=1e-4,
            patience=10,
            progress=False,
            after_step=after_step,
        )

    assert len(run(False).loss) == 30  # stopped as soon as the jump filled the window
    restarted = run(True)
    assert len(restarted.loss) > 60 and restarted.stop_reason == "converged"
    assert restarted.loss[-1] < 5.0 + 0.01  # close to the new minimum, 5


def test_adam_is_torchs_fused_adam_step_for_step_and_follows_plain_adam():
    """``adam`` is torch's fused Adam (one kernel per group) where torch has it: every step
    equals it bit for bit, and stays within rounding of the for-loop implementation."""
    rng = np.random.default_rng(3)
    start = [torch.tensor(rng.normal(size=n)) for n in (5, 3)]
    runs = {}
    for name in ("mine", "fused", "plain"):
        params = [t.clone().requires_grad_() for t in start]
        groups = [{"params": params[0], "lr": 0.1}, {"params": [params[1]]}]
        if name == "mine":
            opt = adam(groups, 0.03)
        else:
            opt = torch.optim.Adam(groups, 0.03, fused=(name == "fused") or None)
        for _ in range(5):
            opt.zero_grad()
            (params[0].sin().sum() + (params[1] ** 3).sum()).backward()
            opt.step()
        runs[name] = (opt, params)
    assert runs["mine"][0].defaults["fused"] is True
    for a, b, c, s in zip(runs["mine"][1], runs["fused"][1], runs["plain"][1], start):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)
        assert not torch.equal(a, s)  # it did move
