"""The console: a progress bar per epoch on a terminal (tqdm, an optional extra), else one plain
line per epoch, and the run's closing lines. Prints on rank 0 alone."""

from __future__ import annotations

import time

from resnetlab.errors import plural
from resnetlab.report.observer import Observer
from resnetlab.report.runs import NO_TEST, has_test_figures
from resnetlab.rundir import MODEL_WEIGHTS


class Console(Observer):
    """Prints to `stream` when `enabled` (rank 0, and not --quiet); `epochs` and `batch_size` of
    the run make the bar's title and its examples per second."""

    def __init__(self, stream, enabled: bool, *, epochs: int = 0, batch_size: int = 0) -> None:
        self.stream, self.enabled = stream, enabled
        self.epochs, self.batch_size = epochs, batch_size
        self.bar = None
        self.use_bar = False
        self.epoch_started = time.perf_counter()
        if enabled and stream.isatty():
            try:
                import tqdm  # noqa: F401  (optional extra: a plain line per epoch without it)

                self.use_bar = True
            except ImportError:
                pass

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def on_progress(self, state, step: int, total: int, stats: dict) -> None:
        if not self.use_bar:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=f"epoch {state.epoch + 1}/{self.epochs}",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
        ex_per_sec = step * self.batch_size / max(time.perf_counter() - self.epoch_started, 1e-9)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", ex_s=f"{ex_per_sec:.0f}"
        )

    def on_fallback(self, reason: str) -> None:
        self.say(f"note: {reason}; running op by op from here (--no-capture skips capturing)")

    def on_epoch_end(self, state, row: dict, is_best: bool) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        parts = [
            f"epoch {row['epoch']}/{self.epochs}",
            f"loss {row['train_loss']:.4f}",
            f"train acc {row['train_acc']:.4f}",
        ]
        for split in ("val", "test"):
            if f"{split}_acc" in row:
                parts.append(f"{split} acc {row[f'{split}_acc']:.4f}")
        parts += [
            f"lr {row['lr']:.4g}",
            f"{row['examples_per_sec']:.1f} ex/s",
            f"{row['epoch_seconds']:.1f} s",
        ]
        if row.get("skipped"):  # streamed data: images that did not decode, replaced
            n = row["skipped"]
            parts.append(f"{n} bad {plural(n, 'image')} replaced")
        self.say(", ".join(parts))
        self.epoch_started = time.perf_counter()

    def on_replan(self, event: dict) -> None:
        self.epochs = event["epochs"]
        self.say(event["line"])

    def on_finish(self, summary: dict, final: dict, test_set) -> None:
        """The textbook's two closing lines, with the run's figures, then the kept weights'.
        Accuracies have 4 decimals everywhere, so that figures side by side compare."""
        tested = has_test_figures(summary)
        test = f"test acc {summary['test_acc']:.4f}" if tested else "test not evaluated"
        self.say(f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.4f}, {test}")
        self.say(f"{summary['examples_per_sec']:.1f} examples/sec on {summary['device']}")
        if not tested:
            self.say(NO_TEST)
            return
        if summary.get("test_unreadable"):  # streamed data: left out of the test figures
            n = summary["test_unreadable"]
            self.say(
                f"{n} test {plural(n, 'image')} could not be read, left out of the test figures "
                f"(of {summary['test_count'] + n}): {', '.join(summary['test_unreadable_files'][:3])}"
                f"{', ...' if n > 3 else ''}"
            )
        kept, tta = summary["kept_weights"], summary.get("tta")
        tta_note = f" with {tta} TTA ({summary['kept_test_acc_no_tta']:.4f} without)" if tta else ""
        if kept != MODEL_WEIGHTS:
            self.say(
                f"kept {kept} (epoch {summary['best_epoch']}, val acc {summary['best_val_acc']:.4f}): "
                f"test acc {summary['kept_test_acc']:.4f}{tta_note}"
            )
        elif tta_note:
            self.say(f"kept {kept}: test acc {summary['kept_test_acc']:.4f}{tta_note}")
