"""The settings of each experiment, in a module without torch, so that `resnetlab --help` (which
shows them) starts without importing it (measured: --help 1.9 s with torch imported, 0.2 s without)."""

# One recipe for every net. No augmentation and no label smoothing, so the training error
# measures optimisation alone; BN everywhere (the paper's plain nets have it too); SGD with
# momentum 0.9, weight decay 1e-4 and batch 128 as in He et al., at a high peak rate (0.1) for few
# epochs: the regime where deep plain nets lag. The rate warms up over the first 15% of steps and
# decays linearly to zero, so the last epoch measures what each net can fit rather than the noise
# of a high constant rate (with a constant 0.1, resnet56 had not yet overtaken resnet20 after
# 8 epochs: see docs/degradation.md).
DEGRADATION_RECIPE = dict(
    resize=None,
    normalize=True,
    crop_padding=0,
    flip=False,
    erasing=0.0,
    val_split=0,
    label_smoothing=0.0,
    init="default",
    batch_size=128,
    optimizer="sgd",
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    schedule="onecycle",
    warmup=0.15,
    alternate_flip=False,
    ema=0.0,
    tta="none",
    epoch_test=True,  # the curves are test error per epoch
    progressive_resize=0,
    progressive_until=0.5,
)
# The settings `resnetlab experiment degradation` uses when no flag is given (docs/degradation.md
# records the runs that chose them): narrow nets on a subset of Fashion-MNIST at its native 28 px.
DEGRADATION_DEFAULTS = dict(
    data="fashion-mnist", depths=(20, 56), epochs=8, width=8, subset=8000, seed=0, lr=0.1
)
