"""AIZOO's Keras variable names -> the ``RawWeights`` keys every importer produces.

The TensorFlow, TensorFlow Lite and Keras files all name tensors after the Keras
layers, ``<layer>[_<session suffix>]/<variable>[:0]``:

    conv2d_0_1/kernel                 -> conv2d_0.weight
    conv2d_0_bn_1/moving_variance     -> conv2d_0_bn.running_var
    cls_0_conv_1/convolution_bias     -> cls_0_conv.bias        (TFLite, BN folded)
    loc_4_insert_conv2d_bn/gamma:0    -> loc_4_insert_conv2d_bn.weight  (Keras HDF5)
"""

from __future__ import annotations

import re

_SCOPE = re.compile(r"^(?P<layer>conv2d_\d+|(?:cls|loc)_\d+_(?:insert_conv2d|conv))(?P<bn>_bn)?(?:_\d+)?$")
_CONV_VARS = {"kernel": "weight", "bias": "bias", "convolution_bias": "bias"}
_BN_VARS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def aizoo_key(name: str) -> str | None:
    """The ``RawWeights`` key for a Keras-style variable name, or None if it is not a weight."""
    scope, _, var = name.rpartition("/")
    var = var.split(":", 1)[0]
    match = _SCOPE.match(scope.rsplit("/", 1)[-1])
    if match is None:
        return None
    if match["bn"]:
        leaf = _BN_VARS.get(var)
        return None if leaf is None else f"{match['layer']}_bn.{leaf}"
    leaf = _CONV_VARS.get(var)
    return None if leaf is None else f"{match['layer']}.{leaf}"
