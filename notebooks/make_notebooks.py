"""Writes notebooks/01..05 .ipynb from the cells below (no outputs): edit here, then run
`python notebooks/make_notebooks.py`; tests/test_notebooks.py checks that the committed notebooks
are what this script writes, that they hold no outputs, and runs each in a Jupyter kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# The parameters cell every notebook starts with: one flag decides the budget.
PARAMETERS = """\
import os

# The budget: True runs this notebook in about a minute on a 2-core CPU (few images, few epochs);
# False runs the full recipe (meant for a GPU). CI sets RESNETLAB_NOTEBOOK_SMALL=1.
SMALL = True
if "RESNETLAB_NOTEBOOK_SMALL" in os.environ:
    SMALL = os.environ["RESNETLAB_NOTEBOOK_SMALL"] == "1"
print("budget:", "small" if SMALL else "full")"""

# `resnetlab ARGS` as a shell runs it (through this kernel's Python); a failure stops the notebook.
SHELL = """\
import subprocess
import sys


def resnetlab(args):
    print("$ resnetlab", args)
    done = subprocess.run(
        f"{sys.executable} -m resnetlab {args}", shell=True, text=True, capture_output=True
    )
    print(done.stdout + done.stderr, end="")
    done.check_returncode()"""

CHAPTER_1 = [
    (
        "md",
        """\
# 1. The residual block and ResNet-18

This is the ResNet chapter of *Dive into Deep Learning* (d2l.ai, section 8.6), run on resnetlab.
The code cells are the book's (laid out by the ruff formatter), with one line changed:
`from d2l import torch as d2l` becomes `from resnetlab import d2l`. Run the notebook top to bottom; the cell below decides how
much training it does.""",
    ),
    ("code", PARAMETERS),
    (
        "md",
        """\
## The residual block

A residual block computes `F(x) + x`: two 3x3 convolutions, each followed by batch norm, a ReLU
between them, then the input is added back and a last ReLU applied. When the block changes the
number of channels or halves the resolution, a 1x1 convolution (`use_1x1conv=True`) reshapes the
input so that it can be added.""",
    ),
    (
        "code",
        """\
import torch
from torch import nn
from torch.nn import functional as F

from resnetlab import d2l


class Residual(nn.Module):
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            input_channels, num_channels, kernel_size=3, padding=1, stride=strides
        )
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
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
        return F.relu(Y)""",
    ),
    (
        "md",
        "The output keeps the input's shape; with `use_1x1conv=True, strides=2` it halves the "
        "height and width and changes the channels:",
    ),
    ("code", "blk = Residual(3, 3)\nX = torch.rand(4, 3, 6, 6)\nY = blk(X)\nY.shape"),
    ("code", "blk = Residual(3, 6, use_1x1conv=True, strides=2)\nblk(X).shape"),
    (
        "md",
        """\
## ResNet-18

The first module is GoogLeNet's stem: a 7x7 convolution of stride 2 and a 3x3 max-pool of
stride 2. Then four stages of two residual blocks each; every stage but the first halves the
resolution and doubles the channels. A global average pool and one linear layer end the net.""",
    ),
    (
        "code",
        """\
b1 = nn.Sequential(
    nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
    nn.BatchNorm2d(64),
    nn.ReLU(),
    nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
b3 = nn.Sequential(*resnet_block(64, 128, 2))
b4 = nn.Sequential(*resnet_block(128, 256, 2))
b5 = nn.Sequential(*resnet_block(256, 512, 2))
net = nn.Sequential(
    b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, 10)
)""",
    ),
    ("md", "The shape walk: a 224x224 image through each module."),
    (
        "code",
        """\
X = torch.rand(size=(1, 1, 224, 224))
for layer in net:
    X = layer(X)
    print(layer.__class__.__name__, "output shape:\\t", X.shape)""",
    ),
    (
        "md",
        """\
## The same net in resnetlab

`resnet18_d2l` in resnetlab's model registry is this net, parameter for parameter (the same
`state_dict` keys and shapes), so weights move between the two. `resnetlab summary` prints its
layers, parameters and multiply-adds without allocating anything (it runs on the meta device).""",
    ),
    (
        "code",
        """\
from resnetlab.models import create_model, summarize

ours = create_model("resnet18_d2l")
same = {k: v.shape for k, v in ours.state_dict().items()} == {
    k: v.shape for k, v in net.state_dict().items()
}
print("same parameters:", same, "-", sum(p.numel() for p in net.parameters()), "in all")
ours.load_state_dict(net.state_dict())  # the notebook's weights load into the registry's net
print(summarize("resnet18_d2l", input_size=(1, 96, 96), depth=1))""",
    ),
    (
        "md",
        "The command line does the same. `resnetlab(...)` below runs a `resnetlab` command as a "
        "shell would (`!resnetlab ...` works too, but does not stop the notebook when it fails):",
    ),
    ("code", SHELL + '\n\n\nresnetlab("summary resnet18_d2l --input-size 1 96 96 --depth 0")'),
    (
        "md",
        """\
## Training with the textbook's API

The book trains for 10 epochs at 96x96 pixels with plain SGD at a learning rate of 0.05: about
1.9 GFLOPs per image per step (forward and backward), 600,000 image-steps, minutes on a GPU and
hours on a laptop's CPU. With
`SMALL`, `d2l.SUBSET` limits each split to a fixed random subset and the images stay at their
native 28x28, so the same calls finish in seconds (the accuracy is then far from the book's 0.9).""",
    ),
    (
        "code",
        """\
lr, num_epochs, batch_size, resize = 0.05, 10, 256, 96
if SMALL:
    d2l.SUBSET = 512  # examples per split
    num_epochs, resize = 2, None
torch.manual_seed(0)
train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size, resize=resize)
d2l.train_ch6(net, train_iter, test_iter, num_epochs, lr, d2l.try_gpu())""",
    ),
    (
        "md",
        """\
The same recipe as one command, with a run folder holding the weights, curves and a report
(notebook 4 looks at one): `resnetlab train --preset d2l`. Next: notebook 2 asks *why* the
shortcut helps.""",
    ),
]

CHAPTER_2 = [
    (
        "md",
        """\
# 2. Why residuals: the degradation experiment

He et al. (2016) observed that a deeper *plain* network (convolution, batch norm, ReLU, stacked,
no shortcuts) reaches a **higher training error** than a shallower one. That is not overfitting
(the training error itself is worse) and, with batch norm, not vanishing gradients either: it is
an optimisation difficulty. Adding identity shortcuts removes it. This notebook trains plain and
residual CIFAR-style nets at two depths with one recipe and looks at the training errors and at
the per-layer gradient norms at initialisation.""",
    ),
    ("code", PARAMETERS),
    (
        "code",
        """\
import shutil

from resnetlab.experiments.degradation import format_table, run_degradation

OUT = "runs/notebook-02-degradation"
shutil.rmtree(OUT, ignore_errors=True)  # a fresh experiment each time the notebook runs
if SMALL:  # ResNet-8 vs ResNet-20 (and their plain twins), narrow, on 2,000 images
    settings = dict(depths=(8, 20), epochs=3, width=4, subset=2000)
else:  # the defaults of `resnetlab experiment degradation` (docs/degradation.md): 20 vs 56 layers
    settings = dict(depths=(20, 56), epochs=8, width=8, subset=8000)
result = run_degradation(OUT, **settings, verbose=False)
print(format_table(result))""",
    ),
    (
        "md",
        """\
The curves: training error (left) and test error (right) per epoch; plain nets dashed, residual
nets solid, the deeper net in red. In the full setting the deep plain net ends with the highest
training error and the deep residual net with the lowest (docs/degradation.md has the figures);
the small budget is too short to show it reliably: read it as a demonstration of the mechanics.""",
    ),
    (
        "code",
        """\
from IPython.display import Image

Image(filename=f"{OUT}/degradation.png")""",
    ),
    (
        "md",
        """\
## What the gradients show, and what they do not

The experiment also records, for the two deep nets, the norm of each layer's weight gradient
after one backward pass at initialisation (input layers left, output layers right).""",
    ),
    ("code", 'Image(filename=f"{OUT}/gradients.png")'),
    (
        "code",
        """\
import csv

rows = list(csv.DictReader(open(f"{OUT}/gradients.csv")))
for net in sorted({r["net"] for r in rows}):
    norms = [float(r["grad_norm"]) for r in rows if r["net"] == net]
    print(
        f"{net}: {len(norms)} layers, first {norms[0]:.3g}, smallest {min(norms):.3g}, "
        f"largest {max(norms):.3g}, last {norms[-1]:.3g}"
    )""",
    ),
    (
        "md",
        """\
Both nets' gradients stay within a few orders of magnitude from the first layer to the last:
batch norm keeps the plain net's signal alive, so its gradients do **not** vanish. This is what
He et al. argue: the deep plain net is not starved of gradient, it is harder to *optimise*;
its training error is higher even though every layer receives a usable gradient.

What the figure does not show: how the loss surface looks, or why the shortcuts make it easier
to descend. One reading (the paper's): with a shortcut, a block only has to learn a residual
`F(x) = H(x) - x`, and when the identity is close to optimal, pushing `F` towards zero is easier
than fitting an identity with a stack of nonlinear layers. The gradient norms at one step, at
initialisation, cannot tell these stories apart: they rule out the simplest explanation
(vanishing gradients), no more.""",
    ),
]

CHAPTER_3 = [
    (
        "md",
        """\
# 3. Looking inside: feature maps, Grad-CAM, mistakes

We train a small ResNet on Fashion-MNIST, then look at what each residual stage computes for one
image, at *where* in an image the net finds its class (Grad-CAM, Selvaraju et al. 2017), and at
the test images it gets most confidently wrong. `resnetlab.explain` gives the two functions used
here: `feature_maps(model, image)` and `grad_cam(model, images, target=None)` (the second needs
Captum: `pip install 'resnetlab[explain]'`).""",
    ),
    ("code", PARAMETERS),
    (
        "code",
        """\
import shutil

from resnetlab.train import make_config, train

RUN = "runs/notebook-03"
shutil.rmtree(RUN, ignore_errors=True)
if SMALL:  # a narrow ResNet-20, 2 epochs on 4,000 images: about 20 s on a 2-core CPU
    cfg = make_config("quick", subset=4000, val_split=500, epochs=2, model_kwargs={"width": 8})
else:  # the quick preset: test accuracy about 0.94 (10 minutes on a 2-core CPU)
    cfg = make_config("quick")
summary = train(cfg, out=RUN, verbose=False)
print(f"test accuracy {summary['kept_test_acc']:.3f}")""",
    ),
    (
        "code",
        """\
import matplotlib.pyplot as plt
import torch

from resnetlab.data import load_dataset
from resnetlab.explain import feature_maps, grad_cam, residual_stages
from resnetlab.inference.images import preprocess
from resnetlab.inference.loading import load_model

model, meta = load_model(RUN)  # the kept weights, in eval mode
test = load_dataset("fashion-mnist", train=False)
classes = meta["classes"]
images = preprocess(list(test.images[:256]), meta)  # as the net saw images in training
with torch.no_grad():
    probs = model(images).softmax(1)
pred = probs.argmax(1)
labels = test.labels[:256]
accuracy = (pred == labels).float().mean()
print("stages:", residual_stages(model), f"- accuracy on these 256: {accuracy:.3f}")""",
    ),
    (
        "md",
        """\
## Feature maps

`feature_maps` returns each stage's output for one image (exactly what a forward hook on the
stage sees). Early stages keep the resolution and respond to edges and textures; later ones
have fewer, coarser positions and more channels.""",
    ),
    (
        "code",
        """\
maps = feature_maps(model, images[0])
for name, fmap in maps.items():
    print(name, tuple(fmap.shape))

fig, axes = plt.subplots(len(maps), 9, figsize=(11, 1.4 * len(maps)))
for row, (name, fmap) in zip(axes, maps.items()):
    row[0].imshow(test.images[0, 0], cmap="gray")
    row[0].set_title(f"{classes[labels[0]]}", fontsize=8)
    strongest = fmap.flatten(1).norm(dim=1).argsort(descending=True)[:8]
    for ax, c in zip(row[1:], strongest):
        ax.imshow(fmap[c], cmap="viridis")
        ax.set_title(f"{name}[{int(c)}]", fontsize=8)
    for ax in row:
        ax.axis("off")
fig.tight_layout()""",
    ),
    (
        "md",
        """\
## Grad-CAM of right and wrong predictions

Grad-CAM weights the last residual stage's channels by the gradient of a class score and sums
them: red where the evidence for that class lies. For correct predictions it should sit on the
garment; for mistakes it shows what the net took for the wrong class.""",
    ),
    (
        "code",
        """\
def show_cams(indices, title):
    cams = grad_cam(model, images[indices])  # of each image's predicted class
    fig, axes = plt.subplots(1, len(indices), figsize=(1.8 * len(indices), 2.3))
    for ax, i, cam in zip(axes, indices, cams):
        ax.imshow(test.images[i, 0], cmap="gray")
        ax.imshow(cam, cmap="jet", alpha=0.45)
        ax.set_title(f"true {classes[labels[i]]}\\npred {classes[pred[i]]}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()


right = (pred == labels).nonzero().flatten()[:6].tolist()
wrong = (pred != labels).nonzero().flatten()[:6].tolist()
show_cams(right, "right")
if wrong:
    show_cams(wrong, "wrong")""",
    ),
    (
        "md",
        """\
## The most confident mistakes

Every run writes the test images its kept weights get most confidently wrong (`mistakes.csv`,
`mistakes.png`) and, with Captum installed, their Grad-CAM row (`mistakes_gradcam.png`); the
run's `report.html` shows them. Some are label noise; many are shirts, pullovers and coats,
which look alike at 28x28 pixels.""",
    ),
    (
        "code",
        """\
from IPython.display import Image, display

from resnetlab.report.mistakes import read_mistakes_csv

for row in read_mistakes_csv(f"{RUN}/mistakes.csv")[:5]:
    print(row)
display(Image(filename=f"{RUN}/mistakes.png", width=800))
display(Image(filename=f"{RUN}/mistakes_gradcam.png", width=800))""",
    ),
    (
        "md",
        """\
The same overlays for any image file, from the command line:
`resnetlab explain runs/notebook-03 shoe.png --class Sandal --layer layer2` writes one PNG grid.""",
    ),
]

CHAPTER_4 = [
    (
        "md",
        """\
# 4. From the book to practice

The book's training cell is a function call; in practice a run needs its settings saved, its
weights kept, its results reported, and a way to ship the model. This notebook walks through
resnetlab's answers: presets, run folders, the report, export to ONNX and prediction.""",
    ),
    ("code", PARAMETERS),
    (
        "md",
        """\
## Presets

A preset fills every setting of a run; flags (or keyword arguments) override any of them.
`d2l` is the book's recipe exactly; `quick` is the best accuracy in about 10 minutes on a 2-core
CPU; `best` is meant for a GPU.""",
    ),
    (
        "code",
        """\
from resnetlab.train import make_config

for preset in ("d2l", "quick", "best"):
    c = make_config(preset)
    print(
        f"{preset:6} {c.model:14} epochs {c.epochs:3}  batch {c.batch_size:4}  lr {c.lr:<5} "
        f"{c.optimizer:4} schedule {c.schedule}"
    )""",
    ),
    (
        "md",
        """\
## A run folder

`resnetlab train` writes everything about a run into one folder. Here the `quick` preset on a
subset (with `SMALL`), as the command line would run it.""",
    ),
    (
        "code",
        SHELL,
    ),
    (
        "code",
        """\
import shutil

RUN = "runs/notebook-04"
shutil.rmtree(RUN, ignore_errors=True)
budget = "--subset 2000 --val-split 200 --epochs 2" if SMALL else ""
resnetlab(f"train --preset quick {budget} --out {RUN}")""",
    ),
    (
        "code",
        """\
import json
from pathlib import Path

for f in sorted(Path(RUN).iterdir()):
    print(f"{f.name:22} {f.stat().st_size:>9,} bytes")
summary = json.loads(Path(RUN, "summary.json").read_text())
print({k: summary[k] for k in ("kept_weights", "kept_test_acc", "epochs")})""",
    ),
    (
        "md",
        """\
`config.json` holds every setting (`resnetlab train --config RUN/config.json` repeats the run),
`metrics.csv` one row per epoch, `best.safetensors` the weights chosen on the validation split
(never on the test set), `checkpoint.pt` what `--resume` continues from.

## The report

`report.html` is one self-contained page: settings, environment, timings, curves, confusion
matrix, per-class accuracy, the most confident mistakes (with their Grad-CAM row) and what
happened when. It opens offline; here we only list its sections.""",
    ),
    (
        "code",
        """\
import re

page = Path(RUN, "report.html").read_text()
print(re.findall(r'<section id="([^"]+)"', page))
print(f"{len(page):,} characters, {page.count('data:image/png')} images inline")""",
    ),
    (
        "md",
        """\
## Export to ONNX and predict

`resnetlab export` writes the kept weights as an ONNX model (batch norms folded, the class names
and preprocessing in its metadata) and refuses to write it unless onnxruntime reproduces
PyTorch's outputs on real test images. `resnetlab predict` then classifies image files with
either the PyTorch weights or the ONNX model (it needs the `[onnx]` extra).""",
    ),
    (
        "code",
        """\
# A barely trained net has large logits, and float32 rounding grows with them: the small budget
# accepts differences up to 1e-3 (the default, 1e-4, suits trained weights).
tolerance = "--tolerance 1e-3" if SMALL else ""
resnetlab(f"export {RUN} --check-images 16 {tolerance}")""",
    ),
    (
        "code",
        """\
from PIL import Image as PILImage

from resnetlab.data import load_dataset

test = load_dataset("fashion-mnist", train=False)
for i in range(3):
    PILImage.fromarray(test.images[i, 0].numpy()).save(f"{RUN}/test{i}.png")
print("true classes:", [test.classes[int(y)] for y in test.labels[:3]])
files = " ".join(f"{RUN}/test{i}.png" for i in range(3))
resnetlab(f"predict {RUN} {files}")  # the PyTorch weights
resnetlab(f"predict {RUN}/best.onnx {files}")  # the ONNX model, run by onnxruntime""",
    ),
    (
        "md",
        """\
And in Python, the same prediction:""",
    ),
    (
        "code",
        """\
from resnetlab.inference.predict import predict

for r in predict(RUN, [f"{RUN}/test{i}.png" for i in range(3)], top_k=2):
    print(r["image"], [(t["class"], round(t["prob"], 3)) for t in r["top"]])""",
    ),
    (
        "md",
        """\
Where to go from here: `resnetlab eval RUN --tta flip` (per-class accuracy and the confusion
matrix), `resnetlab compare runs/a runs/b`, `resnetlab bench` (speed against the textbook's own
code) and `resnetlab explain RUN IMAGE...` (Grad-CAM, notebook 3).""",
    ),
]

CHAPTER_5 = [
    (
        "md",
        """\
# 5. Your own photos

The other notebooks train on Fashion-MNIST, which resnetlab downloads for you. Your own photos
are a folder with one sub-folder per class. This notebook makes such a folder (coloured shapes,
so that it runs anywhere), packs it into shards, trains from them, searches a learning rate with
a small sweep, and looks at a mistake with Grad-CAM.""",
    ),
    ("code", PARAMETERS),
    (
        "md",
        """\
## A folder of photos

`photos/train/CLASS/` and `photos/test/CLASS/`: the test photos are set apart by hand here, so
that the test figure comes from photos the training never saw. A circle, square or triangle,
mostly of its class's colour (some of any colour, so that a small net still makes mistakes), on a
noisy background, at mixed sizes, half of them JPEG and half PNG.""",
    ),
    (
        "code",
        """\
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

PHOTOS = Path("photos")
shutil.rmtree(PHOTOS, ignore_errors=True)
rng = random.Random(0)
COLOURS = {"circle": (210, 60, 50), "square": (60, 190, 70), "triangle": (60, 80, 220)}


def photo(shape):
    w, h = rng.randint(48, 96), rng.randint(48, 96)
    background = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in "rgb"))
    img = Image.blend(Image.effect_noise((w, h), 40).convert("RGB"), background, 0.7)
    s = rng.randint(min(w, h) // 3, min(w, h) * 3 // 4)
    x, y = rng.randint(0, w - s), rng.randint(0, h - s)
    colour = tuple(min(255, max(0, c + rng.randint(-40, 40))) for c in COLOURS[shape])
    if rng.random() < 0.3:
        colour = tuple(rng.randrange(256) for _ in "rgb")
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([x, y, x + s, y + s], fill=colour)
    elif shape == "square":
        draw.rectangle([x, y, x + s, y + s], fill=colour)
    else:
        draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=colour)
    return img


per_class = {"train": 60, "test": 15} if SMALL else {"train": 1000, "test": 200}
for split, n in per_class.items():
    for shape in COLOURS:
        folder = PHOTOS / split / shape
        folder.mkdir(parents=True)
        for i in range(n):
            photo(shape).save(folder / f"{shape}{i:03d}.{'jpg' if i % 2 else 'png'}")
print({split: len(list((PHOTOS / split).rglob("*.*"))) for split in per_class})""",
    ),
    (
        "md",
        """\
## Pack it

`resnetlab data pack` writes the folder as WebDataset tar shards with a manifest (classes,
counts, sizes, mean and std, a checksum per shard). Training then streams them: the photos are
read and decoded by worker processes, batch by batch, never all held in memory.""",
    ),
    ("code", SHELL),
    (
        "code",
        """\
import json

shutil.rmtree("shards/photos", ignore_errors=True)
resnetlab(f"data pack {PHOTOS} shards/photos")
manifest = json.loads(Path("shards/photos/manifest.json").read_text())
print({k: manifest[k] for k in ("classes", "splits", "mean", "std")})""",
    ),
    (
        "md",
        """\
## Train from the shards

A small CIFAR-style net (`resnet8`) at 32 px for a few epochs with the small budget. The test
figure is measured on `photos/test/`. `--data imagefolder:photos --stream` would stream the
folder as it is, without packing it.""",
    ),
    (
        "code",
        """\
RUN = "runs/photos"
shutil.rmtree(RUN, ignore_errors=True)
NET = (
    "--model resnet8 --resize 32 --epochs 3"
    if SMALL
    else "--model resnet20 --resize 64 --epochs 30"
)
FIXED = f"{NET} --batch-size 30 --init default --progressive-resize 0"
resnetlab(f"train --data shards:shards/photos {FIXED} --val-split 0 --workers 1 --out {RUN}")
summary = json.loads(Path(RUN, "summary.json").read_text())
print({k: summary[k] for k in ("kept_weights", "kept_test_acc", "epochs")})""",
    ),
    (
        "md",
        """\
## A small sweep

`resnetlab sweep` trains one run per trial and compares them on validation photos held out of
`train/` (`--val-split`), never on the test set; the best trial's kept weights are tested once,
at the end. Here three learning rates, on the folder held in memory (`imagefolder:photos`).
Stopped with Ctrl-C, the same command continues the sweep.""",
    ),
    (
        "code",
        """\
import csv

SWEEP = "runs/photos-sweep"
shutil.rmtree(SWEEP, ignore_errors=True)
trials = 3 if SMALL else 16
resnetlab(
    f"sweep --space lr=log:0.02:0.5 --trials {trials} --pruner none --data imagefolder:photos "
    f"{FIXED} --val-split 30 --out {SWEEP}"
)
for row in csv.DictReader(open(f"{SWEEP}/trials.csv")):
    print(
        f"trial {row['trial']} {row['state']}: lr {float(row['lr']):.3f}, val acc {row['val_acc']}"
    )""",
    ),
    (
        "md",
        """\
## Explain a mistake

`predict` classifies the test photos; the most confident wrong answer is the interesting one.
`resnetlab explain` draws Grad-CAM over it: where the net found evidence for the class it said,
then for the true class.""",
    ),
    (
        "code",
        """\
from resnetlab.inference.predict import predict

files = sorted(str(p) for p in (PHOTOS / "test").rglob("*.*"))
results = predict(RUN, files, top_k=1, device="cpu")
mistakes = sorted(
    (
        (r["top"][0]["prob"], r["image"], r["top"][0]["class"])
        for r in results
        if r["top"][0]["class"] != Path(r["image"]).parent.name
    ),
    reverse=True,
)
print(f"{len(mistakes)} of {len(files)} test photos misclassified")
prob, IMAGE, said = mistakes[0]
TRUE = Path(IMAGE).parent.name
print(f"the most confident mistake: {IMAGE}, a {TRUE} called {said} ({prob:.2f})")""",
    ),
    (
        "code",
        """\
from IPython.display import Image as Show
from IPython.display import display

resnetlab(f"explain {RUN} {IMAGE} --out {RUN}/mistake.png")
resnetlab(f"explain {RUN} {IMAGE} --class {TRUE} --out {RUN}/truth.png")
display(Show(filename=f"{RUN}/mistake.png"), Show(filename=f"{RUN}/truth.png"))""",
    ),
    (
        "md",
        """\
With your own photos: point `data pack` (or `train --data imagefolder:PATH --stream`) at their
folder, give a `--resize` that keeps what tells the classes apart, and start from pretrained
weights (`--init-from`) when there are few photos; `resnetlab report RUN` shows the run's page,
its most confident mistakes and their Grad-CAM row.""",
    ),
]

NOTEBOOKS = {
    "01_residual_block_and_resnet18.ipynb": CHAPTER_1,
    "02_why_residuals.ipynb": CHAPTER_2,
    "03_looking_inside.ipynb": CHAPTER_3,
    "04_from_the_book_to_practice.ipynb": CHAPTER_4,
    "05_your_own_photos.ipynb": CHAPTER_5,
}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
    )
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell["id"] = str(i)  # stable ids, numbered as nbstripout numbers them
        nb.cells.append(cell)
    return nb


def render(cells) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else HERE
    for name, cells in NOTEBOOKS.items():
        (folder / name).write_text(render(cells), encoding="utf-8")
        print(folder / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
