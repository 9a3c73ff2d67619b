"""The textbook's helper API: `from resnetlab import d2l` runs the ResNet chapter's PyTorch cells.

"Dive into Deep Learning" (d2l.ai, sec. 8.6) takes its helpers from `from d2l import torch as d2l`.
This module gives the names those cells use, with d2l's signatures, return types and printed
output, built on resnetlab's parts: the data come from `resnetlab.data.Loader` (whole batches
resized on the device, no DataLoader workers), and `train_ch6` keeps its metrics on the device.

Choices a user should know (also in docs/textbook.md):
- `load_data_fashion_mnist` puts its batches on `try_gpu()` (the device the chapter trains on), so
  `X.to(device)` in `train_ch6` costs nothing. The training order is shuffled with a seed drawn from
  torch's global generator, as DataLoader's shuffle is: `torch.manual_seed(s)` first repeats it.
  Each new pass over `train_iter` is a new epoch with a new order.
- `train_ch6`'s plot is drawn live in a notebook (as d2l does) or in a plot window; where nothing
  can show it (a script on a server, the tests) it is saved to `PLOT_DIR/train_ch6.png` (default:
  the current folder, overwritten by each call) and the path is printed.
- `SUBSET` (or the environment variable RESNETLAB_D2L_SUBSET) limits each split to a fixed random
  subset of that many examples: the notebooks' cells, unchanged, run in seconds (the tests use it).
- Names of d2l this module does not provide raise `UnsupportedError` naming them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from resnetlab.data import Loader, load_dataset
from resnetlab.errors import UsageError
from resnetlab.models import Residual  # noqa: F401  (d2l.Residual: the chapter's block, re-exported)
from resnetlab.report.plots import save_png
from resnetlab.train.steps import init_weights

# The d2l names provided (those the chapter's PyTorch cells use, and what they need).
TEXTBOOK_NAMES = (
    "Residual",
    "load_data_fashion_mnist",
    "train_ch6",
    "try_gpu",
    "try_all_gpus",
    "evaluate_accuracy_gpu",
    "accuracy",
    "Accumulator",
    "Timer",
    "Animator",
    "get_fashion_mnist_labels",
    "show_images",
    "set_axes",
    "use_svg_display",
    "plt",
)
__all__ = [n for n in TEXTBOOK_NAMES if n != "plt"] + ["SUBSET", "PLOT_DIR", "UnsupportedError"]

SUBSET: int | None = (
    None  # examples per split (a fixed random subset); None: all, or $RESNETLAB_D2L_SUBSET
)
PLOT_DIR: str | os.PathLike = "."  # where train_ch6 saves its plot when nothing can display it
SUBSET_ENV = "RESNETLAB_D2L_SUBSET"

# The textbook's words for the ten classes (d2l's get_fashion_mnist_labels), not the dataset's.
FASHION_MNIST_LABELS = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


class UnsupportedError(UsageError, AttributeError):
    """A d2l name or behaviour that resnetlab.d2l does not provide (an AttributeError too, so
    `hasattr(d2l, name)` stays False)."""


# --- devices -------------------------------------------------------------------------------


def try_gpu(i: int = 0) -> torch.device:
    """GPU i if it exists, else the CPU."""
    if torch.cuda.device_count() >= i + 1:
        return torch.device(f"cuda:{i}")
    return torch.device("cpu")


def try_all_gpus() -> list[torch.device]:
    """All GPUs, or [cpu] when there is none."""
    devices = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return devices if devices else [torch.device("cpu")]


# --- small helpers, as d2l has them ----------------------------------------------------------


class Timer:
    """Records several running times."""

    def __init__(self):
        self.times = []
        self.start()

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def avg(self):
        return sum(self.times) / len(self.times)

    def sum(self):
        return sum(self.times)

    def cumsum(self):
        return np.array(self.times).cumsum().tolist()


class Accumulator:
    """Sums over n variables (each `add` reads its arguments as Python floats, as d2l does)."""

    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def reset(self):
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]


def _num_correct(y_hat: Tensor, y: Tensor) -> Tensor:
    """Correct predictions as a 0-d tensor on the device: no host sync."""
    if y_hat.dim() > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    return (y_hat.type(y.dtype) == y).sum()


def accuracy(y_hat: Tensor, y: Tensor) -> float:
    """The number of correct predictions (a float, as d2l returns it)."""
    return float(_num_correct(y_hat, y))


def evaluate_accuracy_gpu(net, data_iter, device=None) -> float:
    """Accuracy of `net` over `data_iter`, counted on the device and read once at the end."""
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters()), torch.empty(0)).device
    correct, total = 0, 0
    with torch.no_grad():
        for X, y in data_iter:
            if device is not None:
                X = [x.to(device) for x in X] if isinstance(X, list) else X.to(device)
                y = y.to(device)
            correct = correct + _num_correct(net(X), y)
            total += y.numel()
    if total == 0:
        raise UsageError(
            "evaluate_accuracy_gpu: data_iter gave no examples; pass a non-empty iterator"
        )
    return float(correct) / total


# --- data ------------------------------------------------------------------------------------


class EpochIterator:
    """A resnetlab Loader that starts a new epoch (a new shuffle) each time it is iterated, as a
    DataLoader does; `len()` is the number of batches. Other attributes are the Loader's."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0

    def __iter__(self):
        self.loader.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


def _subset_size() -> int | None:
    """SUBSET, else $RESNETLAB_D2L_SUBSET, as a positive int (None: the whole dataset)."""
    value, source = (
        (SUBSET, "resnetlab.d2l.SUBSET")
        if SUBSET is not None
        else (os.environ.get(SUBSET_ENV) or None, f"${SUBSET_ENV}")
    )
    if value is None:
        return None
    n = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"{source} must be a positive number of examples, got {value!r}")
    return n


def load_data_fashion_mnist(batch_size, resize=None):
    """(train_iter, test_iter) over Fashion-MNIST: X float32 [B, 1, H, W] in [0, 1] (no
    normalisation), y int64, on `try_gpu()`; the training order is shuffled each epoch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(resize, (tuple, list)):  # torchvision's Resize((h, w)); a square one is an int
        if len(resize) != 2 or resize[0] != resize[1]:
            raise UnsupportedError(
                f"load_data_fashion_mnist(resize={resize!r}): only square sizes "
                f"are supported; pass one integer such as resize=96"
            )
        resize = resize[0]
    if resize is not None and (
        isinstance(resize, bool) or not isinstance(resize, int) or resize < 1
    ):
        raise UsageError(f"resize must be None or a positive integer, got {resize!r}")

    subset = _subset_size()
    # Drawn from torch's global generator, as DataLoader's shuffle is: manual_seed repeats it.
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    device = try_gpu()
    iters = []
    for train in (True, False):
        dataset = load_dataset("fashion-mnist", train=train)
        if subset is not None:
            dataset = dataset.take(min(subset, len(dataset)), seed=0)
        # Both iterators at the caller's batch size, as d2l's DataLoaders (not make_loaders' rule).
        loader = Loader(dataset, batch_size, shuffle=train, resize=resize, seed=seed, device=device)
        iters.append(EpochIterator(loader))
    return tuple(iters)


def get_fashion_mnist_labels(labels) -> list[str]:
    """The text labels of Fashion-MNIST class indices."""
    if torch.is_tensor(labels):
        labels = labels.tolist()  # one device read, not one per label
    return [FASHION_MNIST_LABELS[int(i)] for i in labels]


# --- plots -----------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'resnetlab[plot]'") from None
    return plt


def _display_mode() -> str:
    """ "notebook" (an IPython kernel), "window" (an interactive matplotlib backend) or "file"."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        return "notebook"
    import matplotlib

    backend = matplotlib.get_backend().lower()
    try:
        from matplotlib.backends import BackendFilter, backend_registry

        interactive = backend_registry.list_builtin(BackendFilter.INTERACTIVE)
    except ImportError:  # matplotlib < 3.9
        from matplotlib import rcsetup

        interactive = rcsetup.interactive_bk
    return "window" if backend in {name.lower() for name in interactive} else "file"


def use_svg_display():
    """Notebook figures as SVG (d2l's default); a no-op outside a notebook."""
    try:
        from matplotlib_inline import backend_inline
    except ImportError:
        return
    backend_inline.set_matplotlib_formats("svg")


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend):
    """Sets the labels, limits, scales and legend of matplotlib axes."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale(xscale)
    axes.set_yscale(yscale)
    axes.set_xlim(xlim)
    axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


class Animator:
    """Plots data incrementally: live in a notebook or a plot window; `save(path)` writes a PNG."""

    def __init__(
        self,
        xlabel=None,
        ylabel=None,
        legend=None,
        xlim=None,
        ylim=None,
        xscale="linear",
        yscale="linear",
        fmts=("-", "m--", "g-.", "r:"),
        nrows=1,
        ncols=1,
        figsize=(3.5, 2.5),
    ):
        if legend is None:
            legend = []
        plt = _pyplot()
        self.display = _display_mode()
        if self.display == "file":
            # A figure outside pyplot's registry: nothing to close, no "too many figures" warning.
            from matplotlib.figure import Figure

            self.fig = Figure(figsize=figsize)
            self.axes = self.fig.subplots(nrows, ncols)
        else:
            if self.display == "notebook":
                use_svg_display()
            self.fig, self.axes = plt.subplots(nrows, ncols, figsize=figsize)
        if nrows * ncols == 1:
            self.axes = [self.axes]
        self.config_axes = lambda: set_axes(
            self.axes[0], xlabel, ylabel, xlim, ylim, xscale, yscale, legend
        )
        self.X, self.Y, self.fmts = None, None, fmts

    def add(self, x, y):
        """Adds one point to each line (None skips a line), then redraws."""
        if not hasattr(y, "__len__"):
            y = [y]
        n = len(y)
        if not hasattr(x, "__len__"):
            x = [x] * n
        if not self.X:
            self.X = [[] for _ in range(n)]
        if not self.Y:
            self.Y = [[] for _ in range(n)]
        for i, (a, b) in enumerate(zip(x, y)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        self.axes[0].cla()
        for x, y, fmt in zip(self.X, self.Y, self.fmts):
            self.axes[0].plot(x, y, fmt)
        self.config_axes()
        if self.display == "notebook":
            from IPython import display

            display.display(self.fig)
            display.clear_output(wait=True)
        elif self.display == "window":
            _pyplot().pause(0.001)

    def save(self, path) -> Path:
        """Writes the figure as a PNG (atomically) and returns its path."""
        save_png(self.fig, Path(path))
        return Path(path)


def _image_array(img: Tensor) -> np.ndarray:
    img = img.detach().cpu()
    if img.dim() == 3 and img.shape[0] in (1, 3):  # [C, H, W] as a Loader yields it
        img = img.permute(1, 2, 0)
        if img.shape[-1] == 1:
            img = img[..., 0]
    return img.numpy()


def show_images(imgs, num_rows, num_cols, titles=None, scale=1.5):
    """Draws a grid of images (tensors [H, W] or [C, H, W] on any device, or PIL images); returns
    the axes. Outside a notebook, show or save it with `d2l.plt.show()` / `d2l.plt.savefig(...)`."""
    figsize = (num_cols * scale, num_rows * scale)
    _, axes = _pyplot().subplots(num_rows, num_cols, figsize=figsize)
    axes = np.asarray(axes).flatten()
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        ax.imshow(_image_array(img) if torch.is_tensor(img) else img)
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles:
            ax.set_title(titles[i])
    return axes


# --- training --------------------------------------------------------------------------------


def _materialize_lazy(net: nn.Module, train_iter, device: torch.device) -> None:
    """Gives lazy layers (Residual(None, ...), LazyConv2d) their shapes from one example, so the
    Xavier init sees real weights (the Gluon chapter's net infers its input channels this way)."""
    if not any(nn.parameter.is_lazy(p) for p in net.parameters()):
        return
    X, _ = next(iter(train_iter))
    net.eval()  # BatchNorm must not count this example in its running statistics
    with torch.no_grad():
        net(X[:1].to(device))


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device):
    """Trains `net` as the textbook does (Xavier-uniform init of Conv2d/Linear weights, plain SGD,
    cross-entropy, test accuracy after each epoch) and prints d2l's closing lines."""
    if not isinstance(net, nn.Module):
        raise UnsupportedError(f"train_ch6 trains a torch nn.Module, got {type(net).__name__}")
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise UsageError(f"num_epochs must be a positive integer, got {num_epochs!r}")
    device = torch.device(device)
    net.to(device)
    _materialize_lazy(net, train_iter, device)
    init_weights(net, "xavier")
    print("training on", device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    try:
        # d2l's x range; one epoch gets [0, 1] (d2l's [1, 1] hides every point and warns).
        animator = Animator(
            xlabel="epoch",
            xlim=[1, num_epochs] if num_epochs > 1 else [0, 1],
            legend=["train loss", "train acc", "test acc"],
        )
    except UsageError as e:  # no matplotlib: train anyway, say why there is no plot
        animator = None
        print(f"(no plot: {e})")
    timer, num_batches = Timer(), len(train_iter)
    plot_every = max(
        1, num_batches // 5
    )  # five points an epoch, as d2l (which fails under 5 batches)
    examples = 0
    for epoch in range(num_epochs):
        net.train()
        # Loss sum and correct count stay on the device; they are read five times an epoch, not
        # at every step as d2l's Accumulator does (each read waits for the GPU to finish).
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        epoch_examples = 0
        timer.start()
        for i, (X, y) in enumerate(train_iter):
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                sums += torch.stack([l.detach().double() * len(y), _num_correct(y_hat, y).double()])
            epoch_examples += len(y)
            if animator is not None and (i + 1) % plot_every == 0 and i + 1 < num_batches:
                loss_sum, correct = sums.tolist()
                animator.add(
                    epoch + (i + 1) / num_batches,
                    (loss_sum / epoch_examples, correct / epoch_examples, None),
                )
        if epoch_examples == 0:
            raise UsageError("train_ch6: train_iter gave no batches; pass a non-empty iterator")
        loss_sum, correct = sums.tolist()  # waits for the epoch's last step: the timer is honest
        timer.stop()
        examples += epoch_examples
        train_l, train_acc = loss_sum / epoch_examples, correct / epoch_examples
        test_acc = evaluate_accuracy_gpu(net, test_iter)
        if animator is not None:
            animator.add(epoch + 1, (train_l, train_acc, test_acc))
    print(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    print(f"{examples / timer.sum():.1f} examples/sec on {str(device)}")
    if animator is not None and animator.display == "file":
        print(f"plot saved to {animator.save(Path(PLOT_DIR) / 'train_ch6.png')}")


def __getattr__(name: str):
    if name == "plt":  # d2l.plt, imported on first use (matplotlib is slow to import)
        return _pyplot()
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    raise UnsupportedError(
        f"resnetlab.d2l does not provide d2l.{name}: it has only the names the ResNet chapter's "
        f"PyTorch code uses ({', '.join(TEXTBOOK_NAMES)}); "
        f"for d2l.{name} use the d2l package itself (docs/textbook.md lists what maps where)"
    )
