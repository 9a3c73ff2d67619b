"""`resnetlab bench`: resnetlab's training path against the textbook's, in one process and one run.

    from resnetlab.bench import bench, format_report
    result = bench(model="resnet18_d2l", batch_size=64, resize=96, steps=3, repeats=3)
    print(format_report(result))

Each *variant* is one way of running the same model at the same batch and resolution:
- `textbook`: the notebook's own code (`resnetlab.bench.textbook_baseline`): eager fp32 NCHW, d2l's
  plain SGD step with a host read of the metrics every step, `no_grad` evaluation with the
  training-mode network's batch norms, the per-sample PIL pipeline;
- `fp32`, `bf16`: resnetlab's path: channels_last, the engine's `fit` (foreach SGD, metrics summed
  on the device), evaluation under `inference_mode` with batch norm folded into the convolutions
  (`fuse_bn`) at the trainer's evaluation batch, `resnetlab.data.Loader`, cuDNN autotuning on CUDA
  (`cudnn.benchmark`, as the trainer; the textbook runs without it); `bf16` adds bf16 autocast.
  On CUDA both replay the training step and evaluation from CUDA graphs, as the trainer does.
  Suffixes turn one trick off or on for ablations: `-nchw`, `-nofuse`, `-noforeach`, `-compile`,
  `-nograph`.

Without `variants`, the list also holds each preset's default as a run would pick it here: the
timed probe of precision and layout (train/precision.py) at the bench's model, batch and shape
(`defaults`, and the probe's figures in `defaults_probe`).

For each variant, after one warm-up round (whose peak memory is recorded), `repeats` rounds
time, in turn for every variant (so a busy machine slows all of them alike): `steps` training
steps on ready batches, `steps` evaluation batches, `steps` loader batches, and an end-to-end
pass (loader + training steps, then loader + evaluation). The median round counts. The epoch
time is that end-to-end pass extrapolated to the dataset's full training and test splits.
"""

from resnetlab.bench.core import bench
from resnetlab.bench.measure import training_flops_per_example
from resnetlab.bench.report import FIGURES, compute_summary, format_report
from resnetlab.bench.variants import Variant, parse_variant, preset_defaults

__all__ = [
    "FIGURES",
    "Variant",
    "bench",
    "compute_summary",
    "format_report",
    "parse_variant",
    "preset_defaults",
    "training_flops_per_example",
]
