"""Looking inside a net: each residual stage's feature maps and Grad-CAM heat maps.

    from resnetlab.explain import feature_maps, grad_cam, residual_stages
    maps = feature_maps(net, image)        # {"layer1": [C, H, W], ...}, what a forward hook sees
    cam = grad_cam(net, images)            # [N, H, W] in [0, 1]: where the predicted class came from
    cam = grad_cam(net, images, target=3, layer="layer3.1")

Called `explain` rather than `inspect` so that it is never mistaken for (or shadows, in a script
run from this folder) the standard library's `inspect`, and so that it is named like the
`resnetlab explain` command and the `[explain]` extra that Grad-CAM needs (Captum). It imports only
torch, resnetlab.models and resnetlab.errors: the notebooks, the report and the CLI all use it.
"""

from resnetlab.explain.cam import grad_cam, require_captum
from resnetlab.explain.stages import feature_maps, residual_stages, resolve_layer

__all__ = ["feature_maps", "grad_cam", "residual_stages", "resolve_layer", "require_captum"]
