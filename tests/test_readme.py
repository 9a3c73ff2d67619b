"""The README's "Use" section, run: every ```python block and every `resnetlab ...` line of its
```bash blocks, in the order a reader meets them, in one fresh temporary working directory, so that
the README cannot drift from the code again (issue 31).

Budgets are small so that the whole section runs in about two minutes on two cores. Each change
to a command is stated below (SMALL, PYTHON_BUDGET, NOT_HERE); anything else runs as written. A
README command that fails, or one that is neither run nor listed as not runnable here, fails the
test.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shlex
import shutil
import sys
import types
from pathlib import Path

import pytest

from resnetlab import cli

pytestmark = [pytest.mark.slow, pytest.mark.needs_fashion_mnist]

README = Path(__file__).resolve().parents[1] / "README.md"

# A training budget: a seeded subset, one epoch, a narrow net where the command names no model
# size of its own that matters (appended: argparse takes a repeated flag's last value).
TRAIN = ["--subset", "300", "--epochs", "1", "--batch-size", "64"]
NARROW = ["--model-kwargs", '{"width": 4}']

# README command -> flags appended to it here (each a smaller budget for the same command)
SMALL = {
    "resnetlab train": [*TRAIN, *NARROW, "--out", "runs/quick"],
    # the textbook's recipe meant for a GPU: 96 px resnet18_d2l, here at 32 px on 100 images
    "resnetlab train --preset d2l": ["--subset", "100", "--epochs", "1", "--resize", "32"],
    # two epochs, interrupted inside the second (Ctrl-C, see INTERRUPT) so that the README's
    # `--resume runs/r56` below has a run to continue; at lr 0.02, since at 0.2 this narrow net
    # diverges in 2 epochs to logits too large for export's 1e-4 float32 check
    "resnetlab train --model resnet56 --epochs 30 --lr 0.2 --out runs/r56": [
        *TRAIN,
        *NARROW,
        *("--epochs", "2", "--lr", "0.02"),
    ],
    # the README's width 32 replaced by 4
    "resnetlab train --preset best --weight-decay 1e-3 --model-kwargs '{\"width\": 32}'": [
        *TRAIN,
        *NARROW,
    ],
    "resnetlab train --config runs/r56/config.json --seed 1": [*TRAIN],
    # 300 images of each split instead of 70,000, then one epoch on them
    "resnetlab data pack fashion-mnist shards/fmnist": ["--subset", "300"],
    "resnetlab train --data shards:shards/fmnist --val-split 0": [*TRAIN, *NARROW],
    # one timed round of one batch of 8 at 32 px, for each default variant
    "resnetlab bench": [
        *("--batch-size", "8", "--resize", "32", "--steps", "1", "--repeats", "1"),
    ],
    # two trials of one epoch on 300 images, narrow, instead of 16 of 4 epochs on 20,000
    "resnetlab sweep --space lr=log:0.02:1 --space weight_decay=log:1e-5:1e-2 --trials 16 --preset quick --subset 20000 --epochs 4": [
        *("--trials", "2", "--subset", "300", "--epochs", "1", "--batch-size", "64"),
        *NARROW,
    ],
    # the four default nets, one epoch on 200 images, narrow; into exp/, which the README's
    # `resnetlab compare exp/plain20 ...` line reads
    "resnetlab experiment degradation": [
        *("--epochs", "1", "--subset", "200", "--width", "4", "--out", "exp"),
    ],
}
# README command -> its replacement here, where the README's own text is not a command (`...`)
REPLACED = {
    "resnetlab train --tensorboard ...": "resnetlab train --tensorboard "
    + shlex.join([*TRAIN, *NARROW, "--out", "runs/tb"]),
}
# README command -> why it cannot run here
NOT_HERE = {
    "resnetlab train --model resnet18 --data cifar10 --resize 224 --init-from resnet18.pth": (
        "CIFAR-10 is not on this machine and the tests never download; resnet18.pth is "
        "torchvision's ImageNet file (loading such files: tests/models/test_pretrained.py)"
    ),
}
INTERRUPT = {"resnetlab train --model resnet56 --epochs 30 --lr 0.2 --out runs/r56"}
# torchvision's ResNet keys and shapes, written by its own resnet.py (tests/fixtures/)
TORCHVISION_LAYOUTS = Path(__file__).resolve().parent / "fixtures" / "torchvision_resnet_keys.json"
# The Python blocks' budgets: (README text, what runs here)
PYTHON_BUDGET = [
    ('make_config("quick", epochs=2, subset=5000)', 'make_config("quick", epochs=1, subset=600)'),
]


def use_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Use\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.S | re.M)


def readme_commands() -> list[str]:
    """Each `resnetlab ...` line of the section's bash blocks, without its comment."""
    commands = []
    for block in blocks(use_section(), "bash"):
        for line in block.splitlines():
            if line.startswith("resnetlab "):
                commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


def torchvision_stand_in() -> types.ModuleType:
    """`torchvision.models.resnet18(num_classes=N)` where torchvision is not installed: a module
    holding exactly the parameters and buffers (names, shapes, order) torchvision's own resnet18
    has, from the layout file, so that the README's strict `load_state_dict` checks the same
    thing it does with torchvision (the forward pass is tests/models/test_reference_forward.py)."""
    import torch
    from torch import nn

    layout = json.loads(TORCHVISION_LAYOUTS.read_text())["models"]

    def build(name: str, num_classes: int = 1000) -> nn.Module:
        root = nn.Module()
        for key, shape in layout[name].items():
            *path, leaf = key.split(".")
            module = root
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            if path == ["fc"]:
                shape = [num_classes, *shape[1:]]
            if leaf in ("weight", "bias"):
                module.register_parameter(leaf, nn.Parameter(torch.empty(shape)))
            else:
                dtype = torch.long if leaf == "num_batches_tracked" else torch.float32
                module.register_buffer(leaf, torch.zeros(shape, dtype=dtype))
        return root

    torchvision = types.ModuleType("torchvision")
    torchvision.models = types.SimpleNamespace(
        **{name: functools.partial(build, name) for name in layout}
    )
    return torchvision


def _fixtures(work: Path) -> None:
    """What the README's examples take as given, made here: a picture of a shoe (a test image
    of an ankle boot as a JPEG) and of a bag (a PNG), torchvision's resnet50 file and timm's (our resnet50's weights
    under their names: the same keys), and a finished resnet18 run's model.safetensors."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from resnetlab.data import load_dataset
    from resnetlab.models import create_model

    test = load_dataset("fashion-mnist", train=False)
    boot = int((test.labels == 9).nonzero()[0])
    Image.fromarray(test.images[boot, 0].numpy()).convert("RGB").save(work / "shoe.jpg")
    bag = int((test.labels == 8).nonzero()[0])  # the README's second picture, a bag
    Image.fromarray(test.images[bag, 0].numpy()).save(work / "bag.png")
    torch.save(create_model("resnet50").state_dict(), work / "resnet50-0676ba61.pth")
    save_file(create_model("resnet50").state_dict(), str(work / "model.safetensors"))
    (work / "runs" / "r18").mkdir(parents=True)
    save_file(
        create_model("resnet18", num_classes=10).state_dict(),
        str(work / "runs" / "r18" / "model.safetensors"),
    )


def _run_cli(command: str, monkeypatch, ctrl_c_at) -> None:
    argv = shlex.split(REPLACED.get(command, command))[1:] + SMALL.get(command, [])
    if command in INTERRUPT:
        # 270 training images (300 less the 30 held out) at 64: 5 steps an epoch, and the loop
        # reads its stop flag once a step and once at each epoch's end: the 8th read is epoch 2's
        # second step
        ctrl_c_at(8)
        code = cli.main(argv)
        monkeypatch.undo()
        assert code == 130, f"`{command}` was to be interrupted; it exited {code}"
        return
    assert cli.main(argv) == 0, f"README command failed: {command} (run as {shlex.join(argv)})"


def test_every_readme_command_and_python_block_runs(tmp_path, monkeypatch, ctrl_c_at, capsys):
    commands = readme_commands()
    assert len(commands) >= 20, "the README's Use section lost its commands?"
    python = blocks(use_section(), "python")
    assert len(python) >= 3
    _fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        if command in NOT_HERE:
            continue
        if command.startswith("resnetlab compare runs/a"):
            for name in ("a", "b", "c"):  # the README's runs a, b, c: copies of runs/r56
                if not (tmp_path / "runs" / name).exists():
                    shutil.copytree(tmp_path / "runs" / "r56", tmp_path / "runs" / name)
        _run_cli(command, monkeypatch, ctrl_c_at)
        monkeypatch.chdir(tmp_path)
    if importlib.util.find_spec("torchvision") is None:  # the block runs against its layout
        monkeypatch.setitem(sys.modules, "torchvision", torchvision_stand_in())
    for block in python:
        for readme_text, here in PYTHON_BUDGET:
            block = block.replace(readme_text, here)
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    capsys.readouterr()
    known = {*SMALL, *REPLACED, *NOT_HERE}
    assert not known - set(commands), f"no longer in the README: {known - set(commands)}"
    assert (tmp_path / "runs" / "try" / "summary.json").exists()  # the Python example trained
