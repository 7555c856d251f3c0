"""Optimisation loops: Adam (default) or L-BFGS, stopping rule, progress, checkpoints.

The loop is generic: it trains whatever ``requires_grad`` parameters a module has
against a loss closure. Checkpoints hold the module's ``state_dict``, the optimiser
state, the epoch, the loss history and the RNG state; they are written atomically
(temporary file + :func:`os.replace`) and read back with ``weights_only=True``, so
loading one never executes code. Resuming from a checkpoint reproduces the
uninterrupted run exactly on the same device and dtype.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "TrainingHistory",
    "optimize",
    "adam",
    "resolve_device",
    "save_checkpoint",
    "load_checkpoint",
    "limit_threads",
    "thread_limited",
]


@dataclass
class TrainingHistory:
    """What happened during an optimisation.

    Attributes
    ----------
    loss : list of float
        Loss after each epoch.
    epochs : int
        Epochs run in total (including any before a resume).
    wall_time : float
        Seconds spent in this call.
    stop_reason : str
        ``"converged"`` (relative loss change below ``rtol``), ``"max_epochs"`` or
        ``"time_limit"``.
    """

    loss: list[float] = field(default_factory=list)
    epochs: int = 0
    wall_time: float = 0.0
    stop_reason: str = ""

    def __repr__(self) -> str:
        last = f"{self.loss[-1]:.4g}" if self.loss else "n/a"
        return (
            f"TrainingHistory(epochs={self.epochs}, final_loss={last}, "
            f"wall_time={self.wall_time:.2f} s, stop_reason={self.stop_reason!r})"
        )

    # A history reads as its loss per epoch: len(h), h[-1], list(h), np.asarray(h).
    def __len__(self) -> int:
        return len(self.loss)

    def __getitem__(self, index):
        return self.loss[index]

    def __iter__(self):
        return iter(self.loss)

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        return np.asarray(self.loss, dtype=dtype)


@contextlib.contextmanager
def limit_threads(num_threads: int | None):
    """Temporarily set torch's CPU intra-op threads (``None``: leave unchanged)."""
    if num_threads is not None and (
        isinstance(num_threads, bool)
        or not isinstance(num_threads, numbers.Integral)
        or num_threads < 1
    ):
        raise ValueError(f"num_threads must be an integer >= 1 or None, got {num_threads!r}")
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def thread_limited(function):
    """Decorator: run ``function`` under :func:`limit_threads` of its ``num_threads`` keyword
    (default 1), keeping its signature and docstring."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with limit_threads(kwargs.get("num_threads", 1)):
            return function(*args, **kwargs)

    return wrapper


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to torch.

    Raises
    ------
    ValueError
        A device string torch does not know (``"gpu"``), or CUDA asked for without one.
    TypeError
        Neither a string nor a torch.device.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = as_torch_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available")
    return device


def as_torch_device(device) -> torch.device:
    """``torch.device(device)`` with a ValueError naming a device string torch refuses."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, (str, int)) or isinstance(device, bool):
        raise TypeError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, not {device!r}"
        )
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err


_CHECKPOINT_KEYS = ("module", "optimizer", "epoch", "loss", "rng")


def save_checkpoint(
    path,
    module: nn.Module,
    optimizer,
    epoch: int,
    history: list[float],
    compare_from: int = 0,
    extra: dict | None = None,
) -> None:
    """Write a checkpoint atomically (a uniquely named temporary file, then rename).

    The temporary file lies beside ``path`` (so the rename is atomic) under a name no
    other writer uses, so two runs checkpointing into one folder never collide. A write
    that fails (a full disk, …) removes its temporary file, leaves any previous
    checkpoint at ``path`` intact and raises :class:`OSError` naming ``path``.

    ``compare_from``: first loss the convergence test compares (after the last re-layout).
    ``extra``: the caller's own state (tensors and plain values), given back on resume.
    """
    path = Path(path)
    state = {
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "loss": torch.tensor(history, dtype=torch.float64),
        "rng": torch.get_rng_state(),
        "compare_from": int(compare_from),
        "extra": dict(extra or {}),
    }
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(f"cannot write the checkpoint {path}: {err}") from err
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):  # torch wraps write errors in these
            raise OSError(
                f"could not write the checkpoint {path} ({err}); the previous checkpoint, "
                "if any, is unchanged (is the disk full?)"
            ) from err
        raise


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (never executes code).

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not a checkpoint written by :func:`save_checkpoint` (damaged,
        truncated, another program's, or one holding code rather than tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, …
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, pickle.UnpicklingError):
            reason = "it holds objects other than tensors and plain values"
        raise ValueError(
            f"{path} is not a blase_specutils checkpoint, or it is damaged ({reason}); "
            "delete it to start afresh"
        ) from err
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(
            f"{path} is not a blase_specutils checkpoint (it lacks {', '.join(missing)}); "
            "delete it to start afresh"
        )
    return state


def adam(params, learning_rate: float, *, capturable: bool = False) -> torch.optim.Adam:
    """Adam over ``params`` (tensors or parameter groups), fused into one kernel per group.

    torch's default Adam runs about a dozen operations per parameter group and step (on
    CUDA as multi-tensor kernels, on the CPU one tensor at a time); the fused
    implementation runs two. With few parameters per group that is launch and dispatch
    overhead: on CUDA a third of the launches of a Triton epoch, on the CPU ~5 % of a
    one-order transfer-learning epoch (210 → 218 epochs/s). Falls back to the default
    where this torch has no fused Adam for the parameters' device (CPU before torch 2.4).
    """
    groups = list(params)
    tensors = []
    for group in groups:
        members = group["params"] if isinstance(group, dict) else group
        tensors += [members] if isinstance(members, torch.Tensor) else list(members)
    if tensors and all(p.is_floating_point() for p in tensors):
        try:
            return torch.optim.Adam(groups, lr=learning_rate, capturable=capturable, fused=True)
        except RuntimeError:  # no fused kernel for this device in this torch
            pass
    return torch.optim.Adam(groups, lr=learning_rate, capturable=capturable)


class _GraphedStep:
    """One Adam training step captured as a CUDA graph, re-captured when its key changes."""

    def __init__(self, opt, loss_fn, key_fn):
        self.opt = opt
        self.loss_fn = loss_fn
        self.key_fn = key_fn
        self.graph = None
        self.key = None
        self.static_loss = None

    def _eager(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn()
        loss.backward()
        self.opt.step()
        return loss

    def step(self) -> torch.Tensor:
        key = self.key_fn() if self.key_fn is not None else None
        if self.graph is not None and key == self.key:
            self.graph.replay()
            return self.static_loss
        # Warm up on a side stream with one real step (this epoch), then capture the next.
        with warnings.catch_warnings():
            # The warm-up step runs on a side stream by design (as torch's docs prescribe).
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager().detach()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                static_loss = self.loss_fn()
                static_loss.backward()
                self.opt.step()
        self.graph, self.key, self.static_loss = graph, key, static_loss.detach()
        return loss


def optimize(
    module: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    *,
    epochs: int = 1000,
    learning_rate: float = 0.05,
    optimizer: str = "adam",
    rtol: float = 1e-5,
    patience: int = 20,
    progress: bool = True,
    description: str = "blase",
    after_step: Callable[[int], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    checkpoint_seconds: float | None = None,
    resume: str | os.PathLike | None = None,
    checkpoint_extra: Callable[[], dict] | None = None,
    on_resume: Callable[[dict], None] | None = None,
    time_limit: float | None = None,
    param_groups: list[dict] | None = None,
    num_threads: int | None = 1,
    cuda_graph: bool = False,
    graph_key: Callable[[], object] | None = None,
    lbfgs_options: dict | None = None,
    lbfgs_until_converged: bool = False,
) -> TrainingHistory:
    """Minimise ``loss_fn()`` over the trainable parameters of ``module``.

    Parameters
    ----------
    module : torch.nn.Module
        Holds the parameters; its ``state_dict`` is what checkpoints save.
    loss_fn : callable
        Returns the scalar loss (a fresh graph each call).
    epochs : int
        Maximum number of epochs (total, counting epochs before a resume).
    learning_rate : float
        Adam step size (L-BFGS: its ``lr``).
    optimizer : {"adam", "lbfgs"}
        Adam for many parameters; L-BFGS converges faster on few, smooth parameters.
    rtol : float
        Stop when the best loss of the last ``patience`` epochs improves on the best
        loss before them by less than ``rtol`` (relative). Set to 0 to always run
        ``epochs``.
    patience : int
        Window of the stopping rule, epochs.
    progress : bool
        Show a tqdm progress bar.
    description : str
        Label of the progress bar.
    after_step : callable, optional
        Called with the epoch number after every optimiser step (e.g. clamping, re-layout).
        A true return value says the model changed under the loss (a re-layout): the
        convergence test then compares only the losses from there on.
    checkpoint : path-like, optional
        Where to write checkpoints.
    checkpoint_every : int
        Epochs between checkpoints.
    checkpoint_seconds : float, optional
        Also write a checkpoint when this many seconds passed since the last one.
    resume : path-like, optional
        Continue from this checkpoint.
    checkpoint_extra : callable, optional
        Returns the caller's state that the module's ``state_dict`` does not hold (e.g.
        the parameters its line windows were made from); saved with every checkpoint.
    on_resume : callable, optional
        Called with that saved state (``{}`` for a checkpoint without it) after the
        module and optimiser are restored, so that the caller can rebuild what it derived
        from it: with both, a resumed run is bit-identical to an uninterrupted one.
    time_limit : float, optional
        Stop after this many seconds.
    param_groups : list of dict, optional
        Explicit optimiser parameter groups (e.g. different learning rates); default:
        every trainable parameter of ``module`` with ``learning_rate``.
    num_threads : int or None
        CPU intra-op threads while training (restored afterwards); ``None`` keeps
        torch's setting. The default 1 is deliberate: the engine runs many mid-sized
        kernels per epoch, and on a 2-core machine with anything else running, OpenMP
        fork/join made 2 threads 3–7× slower than 1 (see the README's benchmarks).

    cuda_graph : bool
        On a CUDA device with Adam, capture one training step (forward, backward, Adam) as
        a CUDA graph and replay it: the engine runs hundreds of small kernels per epoch, and
        replaying them removes the launch overhead (H200, 7,700 lines × 335,000 px: 6 ms
        eager, 1.1 ms graphed). Ignored on CPU and for L-BFGS; falls back to eager training
        with a warning if capture fails.
    graph_key : callable, optional
        Returns a token that changes whenever the loss's inputs are replaced (e.g. a new
        sparse layout); the step is then captured again.
    lbfgs_options : dict, optional
        Keyword arguments for :class:`torch.optim.LBFGS` over the defaults here
        (``max_iter=20`` iterations per epoch, ``line_search_fn="strong_wolfe"``, torch's
        tolerances), e.g. ``tolerance_grad``, ``tolerance_change``, ``history_size``.
    lbfgs_until_converged : bool
        L-BFGS only: record each epoch's loss at its end (one more evaluation, without
        gradients) instead of its start, and stop with ``stop_reason="converged"`` once an
        epoch's step ends before ``max_iter`` iterations, i.e. when L-BFGS's own tolerances
        are met. (With ``rtol=0`` that is the only convergence test, as for a fit of a few
        global parameters whose loss is already relative to its start.)

    Returns
    -------
    TrainingHistory
    """
    if epochs < 0:
        raise ValueError("epochs must be non-negative")
    if not learning_rate > 0:
        raise ValueError("learning_rate must be positive")
    groups = param_groups or [{"params": [p for p in module.parameters() if p.requires_grad]}]
    if not any(len(list(g["params"])) for g in groups):
        raise ValueError("nothing to train: no parameter requires a gradient")
    on_gpu = any(p.is_cuda for g in groups for p in g["params"])
    use_graph = bool(cuda_graph) and optimizer == "adam" and on_gpu
    if optimizer == "adam":
        opt = adam(groups, learning_rate, capturable=use_graph)
    elif optimizer == "lbfgs":
        settings = {"max_iter": 20, "line_search_fn": "strong_wolfe", **(lbfgs_options or {})}
        params = [p for g in groups for p in g["params"]]
        opt = torch.optim.LBFGS(params, lr=learning_rate, **settings)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', not {optimizer!r}")

    def extra() -> dict:
        return {} if checkpoint_extra is None else checkpoint_extra()

    graphed = _GraphedStep(opt, loss_fn, graph_key) if use_graph else None
    history = TrainingHistory()
    start_epoch = 0
    compare_from = 0  # the convergence test looks at losses from here on
    if resume is not None and Path(resume).exists():
        state = load_checkpoint(resume)
        try:
            module.load_state_dict(state["module"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ValueError(
                f"the checkpoint {resume} was written for another model or optimiser "
                f"({reason}); resume only a run with the same lines, parameters and "
                "optimizer, or delete the checkpoint to start afresh"
            ) from err
        start_epoch = int(state["epoch"])
        history.loss = [float(x) for x in state["loss"]]
        torch.set_rng_state(state["rng"])
        compare_from = int(state.get("compare_from", 0))
        if on_resume is not None:
            on_resume(dict(state.get("extra") or {}))

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start_epoch, desc=description, leave=False)
    t0 = time.perf_counter()
    last_checkpoint = t0
    history.stop_reason = "max_epochs"
    epoch = start_epoch
    try:
        while epoch < epochs:
            if optimizer == "lbfgs":

                def closure():
                    opt.zero_grad(set_to_none=True)
                    value = loss_fn()
                    value.backward()
                    return value

                first = opt.param_groups[0]["params"][0]
                iterations_before = opt.state[first].get("n_iter", 0)
                loss = opt.step(closure)
                lbfgs_stopped_early = (
                    opt.state[first].get("n_iter", 0) - iterations_before
                    < opt.param_groups[0]["max_iter"]
                )
                if lbfgs_until_converged:  # the loss where the step ended
                    with torch.no_grad():
                        loss = loss_fn()
            elif use_graph:
                try:
                    loss = graphed.step()
                except RuntimeError as err:  # capture failed: train eagerly from here on
                    warnings.warn(
                        f"CUDA graph capture failed ({err}); training without graphs",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    use_graph = False
                    torch.cuda.synchronize()
                    continue
            else:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn()
                loss.backward()
                opt.step()
            epoch += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"loss became {value} at epoch {epoch}; "
                    "lower the learning rate or check the inputs"
                )
            history.loss.append(value)
            if after_step is not None and after_step(epoch):
                # the caller changed the model (e.g. re-sized line windows): the losses
                # before are not comparable, so the convergence test starts afresh
                compare_from = len(history.loss)
            if bar is not None:
                bar.update(1)
                if epoch % 10 == 0:
                    bar.set_postfix(loss=f"{value:.4g}")
            now = time.perf_counter()
            if checkpoint is not None and (
                epoch % checkpoint_every == 0
                or (checkpoint_seconds is not None and now - last_checkpoint > checkpoint_seconds)
            ):
                save_checkpoint(
                    checkpoint, module, opt, epoch, history.loss, compare_from, extra()
                )
                last_checkpoint = now
            if optimizer == "lbfgs" and lbfgs_until_converged and lbfgs_stopped_early:
                history.stop_reason = "converged"
                break
            if rtol > 0 and len(history.loss) - compare_from > patience:
                # Best loss of the last `patience` epochs against the best before them:
                # robust to the small oscillations of Adam.
                before = min(history.loss[compare_from:-patience])
                recent = min(history.loss[-patience:])
                if before - recent <= rtol * abs(before):
                    history.stop_reason = "converged"
                    break
            if time_limit is not None and now - t0 > time_limit:
                history.stop_reason = "time_limit"
                break
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(previous_threads)
    if checkpoint is not None:
        save_checkpoint(checkpoint, module, opt, epoch, history.loss, compare_from, extra())
    history.epochs = epoch
    history.wall_time = time.perf_counter() - t0
    return history
