"""Datasets and the batched loader.

from resnetlab.data import load_dataset, get_dataset_info, Loader, Augment
train = load_dataset("fashion-mnist")            # uint8 [60000, 1, 28, 28], int64 labels, classes
info = get_dataset_info("fashion-mnist")         # channels, size, classes, mean/std
loader = Loader(train, 256, shuffle=True, resize=96, normalize=(info.mean, info.std),
                augment=Augment(crop_padding=4, flip=True), device="cuda")
for epoch in range(epochs):
    loader.set_epoch(epoch)
    for x, y in loader: ...
"""

from resnetlab.data.augment import Augment
from resnetlab.data.batching import Loaders
from resnetlab.data.datasets import (
    Dataset,
    DatasetInfo,
    dataset_status,
    fetch_dataset,
    get_dataset_info,
    list_datasets,
    load_dataset,
    split_dataset,
)
from resnetlab.data.loader import Loader, eval_batch_size, make_loaders

__all__ = [
    "Augment",
    "Dataset",
    "DatasetInfo",
    "Loader",
    "Loaders",
    "dataset_status",
    "eval_batch_size",
    "fetch_dataset",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "make_loaders",
    "split_dataset",
]
