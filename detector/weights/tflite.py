"""TensorFlow Lite (``.tflite``) importer: reads the FlatBuffer without TensorFlow.

Schema fields used (tensorflow/lite/schema/schema.fbs): Model.subgraphs 2, Model.buffers 4;
SubGraph.tensors 0, SubGraph.inputs 1; Tensor.shape 0, type 1, buffer 2, name 3;
Buffer.data 0 (or offset 1 + size 2 past the FlatBuffer, for large models).

AIZOO's file was converted by TOCO from the Keras graph: NHWC, conv kernels OHWI named
``<layer>_1/kernel``, BatchNorm folded into them, biases ``<layer>_1/convolution_bias``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from detector.errors import WeightsError
from detector.weights import _flatbuffers as fb
from detector.weights._keras_names import aizoo_key
from detector.weights.convert import RawWeights
from detector.weights.limits import admit, read_bounded

_IDENTIFIER = b"TFL3"
_FLOAT_TYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2")}  # TensorType FLOAT32, FLOAT16


def sniff(head: bytes, path: Path) -> bool:
    return head[4:8] == _IDENTIFIER


def _buffer_bytes(buffer: fb.Table, data: memoryview) -> memoryview:
    offset = int(buffer.scalar(1, "<Q"))
    if offset > 1:  # stored past the FlatBuffer
        size = int(buffer.scalar(2, "<Q"))
        if offset + size > len(data):
            raise fb.FlatbufferError(f"buffer at {offset}+{size} is past the end of the file")
        return data[offset : offset + size]
    return memoryview(buffer.array(0, "u1"))


def read(path: Path) -> RawWeights:
    data = memoryview(read_bounded(path))
    tensors: dict[str, np.ndarray] = {}
    input_size = None
    try:
        model = fb.root(data)
        buffers = model.tables(4)
        subgraphs = model.tables(2)
        if not subgraphs:
            raise WeightsError(path, "the TensorFlow Lite model has no subgraph")
        graph = subgraphs[0]
        all_tensors = graph.tables(0)
        for t in all_tensors:
            key = aizoo_key(t.string(3))
            if key is None:
                continue
            dtype = _FLOAT_TYPES.get(int(t.scalar(1, "<b")))
            if dtype is None:
                raise WeightsError(path, f"tensor {t.string(3)!r} is quantized or not float; only float models load")
            shape = [int(d) for d in t.array(0, "<i4")]
            if not admit(path, key, shape, layout="OHWI"):
                continue
            index = int(t.scalar(2, "<I"))
            if index >= len(buffers):
                raise fb.FlatbufferError(f"tensor {t.string(3)!r} names buffer {index} of {len(buffers)}")
            raw = _buffer_bytes(buffers[index], data)
            if len(raw) != math.prod(shape) * dtype.itemsize:
                raise WeightsError(path, f"tensor {t.string(3)!r} of shape {shape} holds {len(raw)} bytes")
            tensors[key] = np.frombuffer(raw, dtype=dtype).astype(np.float32).reshape(shape)
        inputs = graph.array(1, "<i4")
        if len(inputs) and 0 <= inputs[0] < len(all_tensors):
            dims = [int(d) for d in all_tensors[inputs[0]].array(0, "<i4")]
            if len(dims) == 4 and dims[1] == dims[2] > 0:
                input_size = dims[1]
    except fb.FlatbufferError as exc:
        raise WeightsError(path, f"not a valid TensorFlow Lite model ({exc}); is the file truncated?") from None
    if not tensors:
        raise WeightsError(path, "the TensorFlow Lite model holds no AIZOO layer weights")
    return RawWeights(path=path, format="tflite", tensors=tensors, layout="OHWI", input_size=input_size)
