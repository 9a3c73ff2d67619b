"""Using a trained net: nothing here imports the trainer (train/ imports evaluation from here).

loading.py     weights + metadata -> model, and the loader that shows it data as training did
evaluation.py  evaluate / Evaluator: loss, accuracy, confusion, per-example results, on the device
tta.py         test-time augmentation (flip, flip-shift) as a model wrapper
eval_run.py    `resnetlab eval`, and the mistakes a run's report shows
images.py      image files as the model's input
predict.py     `resnetlab predict` (weights or ONNX)
onnx.py        `resnetlab export`: ONNX out, checked by onnxruntime
"""

# Test-time augmentations (tta.py), here without torch: the CLI's flags read them at start-up.
TTA_MODES = ("none", "flip", "flip-shift")
