"""The two ways of running one model at one batch and resolution: the textbook's own code and
resnetlab's training API. Both offer the same methods, which `measure.timed_round` times."""

from __future__ import annotations

import dataclasses
import itertools

import torch

from resnetlab.bench import textbook_baseline as tb
from resnetlab.bench.variants import Variant
from resnetlab.data import Loaders
from resnetlab.inference.evaluation import Evaluator
from resnetlab.models import create_model
from resnetlab.models.fuse import fuse_bn
from resnetlab.train.engine import Schedule, TrainState, fit
from resnetlab.train.graphs import CapturedEvaluator
from resnetlab.train.presets import make_config
from resnetlab.train.setup import Splits, build

TEXTBOOK_LR = 0.05  # the chapter's learning rate; both paths take the same plain SGD step


class Batches:
    """The first `steps` batches of a loader (or list), with the loader interface `fit` uses."""

    def __init__(self, source, steps: int):
        self.source, self.steps = source, steps

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def loss_weight(self, i: int) -> float:
        """One process, every share whole (see Loader.loss_weight)."""
        return 1.0

    def __iter__(self):
        return itertools.islice(iter(self.source), self.steps)


class Runner:
    """One path of the bench, built from the same arguments whichever it is (bench/core.py):
    `variant`, the model, the data, the batch, the resize, the steps timed, the device, the seed;
    each path prepares its net and batches in `_prepare`."""

    def __init__(
        self,
        variant: Variant,
        model_name: str,
        data: Splits,
        batch_size: int,
        resize: int | None,
        steps: int,
        device: torch.device,
        seed: int,
    ):
        self.variant, self.device, self.steps = variant, device, steps
        self._prepare(variant, model_name, data, batch_size, resize, steps, device, seed)

    def _prepare(self, variant, model_name, data, batch_size, resize, steps, device, seed) -> None:
        raise NotImplementedError


class TextbookRunner(Runner):
    """The notebook's net and d2l's loop (resnetlab.bench.textbook_baseline)."""

    def _prepare(self, variant, model_name, data, batch_size, resize, steps, device, seed) -> None:
        self.tb = tb
        torch.manual_seed(seed)
        train, test = data.train, data.test
        if model_name == "resnet18_d2l" and train.images.shape[1] == 1 and len(train.classes) == 10:
            net = tb.notebook_resnet18()
        else:
            net = create_model(
                model_name, num_classes=len(train.classes), in_chans=train.images.shape[1]
            )
        net.apply(tb.init_weights)
        self.net = net.to(device)
        self.optimizer, self.loss = tb.make_optimizer(self.net, TEXTBOOK_LR)
        # d2l uses 4 workers. On a CPU they would compete with the training threads for the same
        # cores, so the pipeline runs in the main process there; on a GPU they run beside it.
        workers = 4 if device.type == "cuda" else 0
        self.train_loader = tb.pil_loader(
            train.images, train.labels, batch_size, shuffle=True, resize=resize, workers=workers
        )
        self.test_loader = tb.pil_loader(
            test.images, test.labels, batch_size, shuffle=False, resize=resize, workers=workers
        )
        self.eval_batch_size = batch_size
        self.train_batches = [
            (x.to(device), y.to(device)) for x, y in itertools.islice(self.train_loader, steps)
        ]
        self.eval_batches = [
            (x.to(device), y.to(device)) for x, y in itertools.islice(self.test_loader, steps)
        ]

    def train(self, batches) -> None:
        self.tb.train_batches(self.net, batches, self.optimizer, self.loss, self.device)

    def prepare_eval(self) -> None:
        pass  # the textbook evaluates the training network as it is

    def evaluate(self, batches) -> None:
        self.tb.evaluate_accuracy_gpu(self.net, batches, self.device)

    def load(self, steps: int) -> None:
        for x, y in itertools.islice(self.train_loader, steps):
            x, y = x.to(self.device), y.to(self.device)

    def train_from_loader(self, steps: int) -> None:
        self.train(itertools.islice(self.train_loader, steps))

    def evaluate_from_loader(self, steps: int) -> None:
        self.evaluate(itertools.islice(self.test_loader, steps))


class ResnetlabRunner(Runner):
    """resnetlab's path: the training seam's parts (`setup.build`), the engine's fit and evaluation,
    fuse_bn; on CUDA the step and evaluation replayed from graphs (unless -nograph)."""

    def _prepare(self, variant, model_name, data, batch_size, resize, steps, device, seed) -> None:
        # The d2l preset's optimisation (plain SGD at the chapter's rate, Xavier init), so both paths
        # take the same step; only how it is computed differs.
        # (replace, not make_config's overrides, for `resize`: there None means "the dataset's size",
        # not "the preset's 96 px")
        self.cfg = dataclasses.replace(
            make_config(
                "d2l",
                model=model_name,
                batch_size=batch_size,
                epochs=1,
                seed=seed,
                lr=TEXTBOOK_LR,
                amp=variant.amp,
                channels_last=variant.channels_last,
                compile=variant.compile,
                capture=variant.capture,
                device=str(device),
            ),
            resize=resize,
        )
        parts = build(self.cfg, splits=data, foreach=variant.foreach)
        self.model, self.train_model, self.optimizer = parts.raw_model, parts.model, parts.optimizer
        self.capture = parts.capture
        self.step = (
            parts.step
        )  # kept across rounds: a CUDA graph is captured once, in the warm-up round
        self.evaluator = None
        self.train_loader, self.test_loader = parts.loaders.train, parts.loaders.test
        self.eval_batch_size = self.test_loader.batch_size
        self.train_batches = list(itertools.islice(self.train_loader, steps))
        self.eval_batches = list(itertools.islice(self.test_loader, steps))

    def train(self, batches) -> None:
        # no evaluation: fit trains only, on these batches, at the configuration's schedule
        loaders = Loaders(train=Batches(batches, len(batches)), val=None, test=None)
        schedule = Schedule(self.cfg.schedule, self.cfg.lr, self.cfg.warmup)
        fit(self.step, None, loaders, TrainState(), schedule, epochs=1)

    def prepare_eval(self) -> None:
        """What an evaluation costs once, before its first batch: folding (and compiling, or
        capturing its graph on two batches)."""
        model = fuse_bn(self.model) if self.variant.fuse else self.model
        if self.capture and self.evaluator is not None:
            # One graph for the whole bench, captured in the untimed warm-up round: each capture
            # synchronises and empties the allocator's cache, which the variant timed next would
            # pay for. Later rounds fold the current weights into the captured model's tensors.
            if model is not self.evaluator.model:
                self.evaluator.model.load_state_dict(model.state_dict())
        elif self.capture:
            self.evaluator = CapturedEvaluator(model, self.device, amp=self.variant.amp)
            self.evaluator(self.eval_batches[:2])
        else:
            self.evaluator = Evaluator(
                torch.compile(model) if self.variant.compile else model,
                self.device,
                amp=self.variant.amp,
            )

    def evaluate(self, batches) -> None:
        self.evaluator(batches)

    def load(self, steps: int) -> None:
        for _ in itertools.islice(self.train_loader, steps):
            pass

    def train_from_loader(self, steps: int) -> None:
        self.train(Batches(self.train_loader, steps))

    def evaluate_from_loader(self, steps: int) -> None:
        self.evaluate(Batches(self.test_loader, steps))
