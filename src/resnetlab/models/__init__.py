"""Models: the textbook ResNet-18, the ImageNet ResNet family, CIFAR ResNets, one registry.

from resnetlab.models import create_model, list_models, summarize
net = create_model("resnet18_d2l")            # the notebook's net, 1 channel, 10 classes
net = create_model("resnet50", num_classes=100)
print(summarize("resnet20", input_size=(3, 32, 32)))
"""

from resnetlab.models.blocks import (
    BasicBlock,
    Bottleneck,
    PlainBlock,
    PreActBlock,
    Residual,
    conv1x1,
    conv3x3,
)
from resnetlab.models.cifar import CifarResNet, ZeroPadShortcut
from resnetlab.models.create import create_model
from resnetlab.models.d2l import resnet18_d2l, resnet_block
from resnetlab.models.registry import ModelInfo, get_model_info, list_models, register_model
from resnetlab.models.resnet import ResNet
from resnetlab.models.summary import (
    LayerRow,
    ModelListing,
    ModelSummary,
    describe_models,
    render_model_table,
    summarize,
)

__all__ = [
    "Residual",
    "BasicBlock",
    "Bottleneck",
    "PreActBlock",
    "PlainBlock",
    "conv1x1",
    "conv3x3",
    "ResNet",
    "CifarResNet",
    "ZeroPadShortcut",
    "resnet_block",
    "resnet18_d2l",
    "ModelInfo",
    "create_model",
    "list_models",
    "register_model",
    "get_model_info",
    "summarize",
    "ModelSummary",
    "LayerRow",
    "describe_models",
    "ModelListing",
    "render_model_table",
]
