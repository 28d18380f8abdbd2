"""int8 inference on CPU: a quantized copy of :class:`~detector.model.AizooSSD`.

Post-training static quantization (``torch.ao.quantization``, eager mode, x86 engine:
oneDNN/FBGEMM int8 kernels with VNNI where the CPU has it):

- weights: int8, per output channel, symmetric;
- activations: uint8 per tensor (7-bit range, the x86 default that keeps FBGEMM's 16-bit
  intermediate sums from saturating; full 8-bit moved boxes more), ranges set by
  histogram observers on calibration frames, each seeing every 7th activation value;
- the input is 7-bit too (scale 1/127, zero point 0: two neighbouring pixel values share a
  level). Exact 8-bit input (scale 1/255) overflowed the first convolution's 16-bit sums on a
  CPU without VNNI (AVX2): int8 then agreed with float32 on 92 of 200 frames, now >= 99 %;
- each conv+ReLU pair is fused into one int8 kernel; the heads' last convolutions stay
  float32, so box offsets and logits are not rounded to 8 bits.

On a 2-core AVX-512 Xeon this runs ~2.4x the fused float32 graph (8 frames a call). Its detections are not
bit-equal to float32: scores move by ~1e-2 and boxes by a pixel or two; faces scored near
the threshold can appear or vanish (see ``benchmarks/README.md`` for measured agreement).
"""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.model import AizooSSD, flatten_head
from detector.preprocess import to_tensor

logger = logging.getLogger(__name__)

ENGINE = "x86"
OBSERVE_EVERY = 7  # a histogram of every 7th value: 3.7x faster calibration, same ranges to ~1 %


def int8_available() -> bool:
    """Whether this torch build has the x86 quantized engine."""
    return ENGINE in torch.backends.quantized.supported_engines


class Int8AizooSSD(nn.Module):
    """A quantizable copy of :class:`AizooSSD`; call :func:`quantize` to get a usable one.

    ``forward``: (N, 3, S, S) float in [0, 1] -> ``(loc (N, A, 4), scores (N, A, C))`` float32,
    as :class:`AizooSSD`.
    """

    def __init__(self, model: AizooSSD) -> None:
        super().__init__()
        self.spec = model.spec
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        self.backbone = nn.ModuleList(nn.Sequential(c, nn.ReLU()) for c in model.backbone)
        self.loc_insert = nn.ModuleList(nn.Sequential(h.insert, nn.ReLU()) for h in model.loc_heads)
        self.cls_insert = nn.ModuleList(nn.Sequential(h.insert, nn.ReLU()) for h in model.cls_heads)
        self.loc_out = nn.ModuleList(h.out for h in model.loc_heads)
        self.cls_out = nn.ModuleList(h.out for h in model.cls_heads)
        self.quantized = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.quantized:
            # 7 bits, as every other activation (``reduce_range``): on a CPU without VNNI the int8
            # kernels sum pairs of u8 x s8 products in int16, which 255 x 127 x 2 overflows (AVX2:
            # the first convolution saturated and int8 found the same faces on 92 of 200 frames)
            x = torch.quantize_per_tensor(x.contiguous(), 1 / 127, 0, torch.quint8)
        feats = []
        n = len(self.backbone)
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i in self.spec.head_sources:
                feats.append(x)
            if i < n - 2:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)

        def head(insert: nn.Module, out: nn.Module, f: torch.Tensor, last: int) -> torch.Tensor:
            y = insert(f)
            return flatten_head(out(y.dequantize() if y.is_quantized else y), last)

        c = self.spec.num_classes
        loc = torch.cat([head(i, o, f, 4) for i, o, f in zip(self.loc_insert, self.loc_out, feats)], 1)
        cls = torch.cat([head(i, o, f, c) for i, o, f in zip(self.cls_insert, self.cls_out, feats)], 1)
        return loc, torch.sigmoid(cls)


def _strided_histogram_observer() -> type:
    import torch.ao.quantization as tq

    class StridedHistogramObserver(tq.HistogramObserver):
        """A :class:`HistogramObserver` fed every ``OBSERVE_EVERY``-th value of each tensor
        (a fixed stride: deterministic). The full maps of a 16-frame batch are ~500 MB;
        histogramming all of them was ~70 % of calibrating."""

        def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
            x = x_orig.detach()
            if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                x = x.permute(0, 2, 3, 1)  # a view whose flattening needs no copy
            super().forward(x.reshape(-1)[::OBSERVE_EVERY])
            return x_orig

    return StridedHistogramObserver


def quantize(model: AizooSSD, calibration: np.ndarray, *, batch_size: int = 16) -> Int8AizooSSD:
    """An int8 copy of ``model`` calibrated on ``calibration``: (N, S, S, 3) uint8 RGB frames
    already resized to the model's input (a few dozen varied frames of the data to come).

    Deterministic: the same model and frames give the same quantization parameters.
    """
    import torch.ao.quantization as tq

    if not int8_available():
        raise RuntimeError(f"int8 needs torch's {ENGINE!r} quantized engine, which this build lacks")
    frames = np.asarray(calibration)
    if (
        frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[0] == 0
        or frames.shape[1:] != (model.spec.input_size,) * 2 + (3,)
    ):
        s = model.spec.input_size
        raise ValueError(f"calibration must be (N>0, {s}, {s}, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    torch.backends.quantized.engine = ENGINE
    qmodel = Int8AizooSSD(model).eval()
    for block in (*qmodel.backbone, *qmodel.loc_insert, *qmodel.cls_insert):
        tq.fuse_modules(block, [["0", "1"]], inplace=True)
    default = tq.get_default_qconfig(ENGINE)
    observer = _strided_histogram_observer().with_args(reduce_range=True)  # as ``default.activation``
    qmodel.qconfig = tq.QConfig(activation=observer, weight=default.weight)
    for out in (*qmodel.loc_out, *qmodel.cls_out):
        out.qconfig = None
    with warnings.catch_warnings():
        # eager-mode quantization works in this torch but announces its successor (PT2E)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        tq.prepare(qmodel, inplace=True)
        qmodel.to(memory_format=torch.channels_last)  # the float calibration pass: ~2x faster
        with torch.inference_mode():
            for start in range(0, len(frames), batch_size):
                qmodel(to_tensor(torch.from_numpy(frames[start : start + batch_size])))
        tq.convert(qmodel, inplace=True)
    qmodel.quantized = True
    logger.info("int8 model calibrated on %d frames", len(frames))
    return qmodel
