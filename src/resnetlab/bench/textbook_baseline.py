"""The baseline `resnetlab bench` measures against: the textbook's own code, run the textbook's way.

Kept verbatim on purpose, so the comparison is with what the notebooks run and not with
resnetlab's version of it (`resnetlab.models.resnet18_d2l`, `resnetlab.d2l`):
- `Residual`, `resnet_block` and `notebook_resnet18` are the notebook's cells (d2l.ai sec. 8.6,
  PyTorch), including the unused `self.relu`;
- `train_batches` is the body of d2l's `train_ch6` batch loop (plain SGD, a host read of the loss
  and accuracy after every step through `Accumulator`), without the plot it redraws five times
  an epoch; `evaluate_accuracy_gpu`, `accuracy` and `Accumulator` are d2l's;
- `pil_loader` rebuilds `d2l.load_data_fashion_mnist(batch_size, resize)` without torchvision:
  per sample, `Image.fromarray` (torchvision's FashionMNIST), `img.resize((r, r), BILINEAR)`
  (`transforms.Resize(r)` on a square image), then `ToTensor` (uint8 array -> float / 255), and a
  `torch.utils.data.DataLoader` that shuffles and stacks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils import data

from resnetlab.errors import UsageError

# --- the notebook's net (its cells, verbatim) ------------------------------------------------


class Residual(nn.Module):
    def __init__(self, input_channels, num_channels,
                 use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels,
                               kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels,
                               kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels,
                                   kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


def notebook_resnet18():
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    net = nn.Sequential(b1, b2, b3, b4, b5,
                        nn.AdaptiveAvgPool2d((1, 1)),
                        nn.Flatten(), nn.Linear(512, 10))
    return net


# --- d2l's training helpers (d2l/torch.py, verbatim) -----------------------------------------


class Accumulator:
    """For accumulating sums over `n` variables."""

    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def reset(self):
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]


def accuracy(y_hat, y):
    """Compute the number of correct predictions."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def evaluate_accuracy_gpu(net, data_iter, device=None):
    """Compute the accuracy for a model on a dataset using a GPU."""
    if isinstance(net, nn.Module):
        net.eval()  # Set the model to evaluation mode
        if not device:
            device = next(iter(net.parameters())).device
    # No. of correct predictions, no. of predictions
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            if isinstance(X, list):
                X = [x.to(device) for x in X]
            else:
                X = X.to(device)
            y = y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


def init_weights(m):
    """train_ch6's initialisation, applied with `net.apply(init_weights)`."""
    if type(m) == nn.Linear or type(m) == nn.Conv2d:  # noqa: E721 (d2l's own test)
        nn.init.xavier_uniform_(m.weight)


def train_batches(net, train_iter, optimizer, loss, device):
    """The body of d2l.train_ch6's epoch: one SGD step per batch, metrics read on the host each step.
    Returns (mean loss, accuracy, examples) as train_ch6 computes them."""
    metric = Accumulator(3)
    net.train()
    for i, (X, y) in enumerate(train_iter):
        optimizer.zero_grad()
        X, y = X.to(device), y.to(device)
        y_hat = net(X)
        l = loss(y_hat, y)  # noqa: E741 (d2l's name)
        l.backward()
        optimizer.step()
        with torch.no_grad():
            metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
    return metric[0] / metric[2], metric[1] / metric[2], metric[2]


def make_optimizer(net, lr):
    """train_ch6's optimizer and loss."""
    return torch.optim.SGD(net.parameters(), lr=lr), nn.CrossEntropyLoss()


# --- d2l.load_data_fashion_mnist without torchvision -----------------------------------------


class PILImages(data.Dataset):
    """torchvision's FashionMNIST + Compose([Resize(resize), ToTensor()]), per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, resize: int | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise UsageError(f"PILImages needs uint8 [N, 1 or 3, H, W] images, got {images.dtype} {list(images.shape)}")
        # torchvision keeps FashionMNIST as uint8 [N, H, W]; colour sets as [N, H, W, C]
        self.data = images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1).contiguous()
        self.targets = labels
        self.resize = resize

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        from PIL import Image

        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy())
        if self.resize:
            img = img.resize((self.resize, self.resize), Image.BILINEAR)
        return self._to_tensor(img), target

    @staticmethod
    def _to_tensor(pic):
        """torchvision's ToTensor for a uint8 PIL image."""
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
        img = img.permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255)


def pil_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
               resize: int | None = None, workers: int = 0) -> data.DataLoader:
    """One split of d2l.load_data_fashion_mnist: DataLoader(dataset, batch_size, shuffle, num_workers).

    d2l uses 4 workers. Persistent workers keep their start-up (a fixed cost per epoch) out of
    throughput figures taken over a few batches."""
    return data.DataLoader(PILImages(images, labels, resize), batch_size, shuffle=shuffle,
                           num_workers=workers, persistent_workers=workers > 0)
