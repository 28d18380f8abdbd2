"""Footage with faces of known size and label, and the true boxes to score a detector against.

The shared photos' faces (``aizoo_demo2.jpg``: masked, ``skimage_astronaut.png``: unmasked)
are cut out with some context, scaled so that the face is a chosen number of pixels wide,
and moved across a textured background along straight paths inside one cell each of a grid
(so they never overlap), their brightness and blur changing over time. A face's true box is
the reference runtime's box on its photo (``shared/README.md``), scaled and moved with it:
the same notion of "the face" the detector was trained to draw.

:class:`FaceScene` has ``frame(i)`` / ``width`` / ``height`` like :mod:`benchmarks.videogen`'s
scenes, so :func:`benchmarks.videogen.write_video` encodes it; :meth:`FaceScene.truth` is the
boxes. :func:`write_clip` writes both (``<name>.mp4`` and ``<name>.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.videogen import write_video

# The reference runtime's face box on each shared photo (shared/README.md), and its label.
FACE_BOXES = {
    "Mask": (222.5, 49.8, 327.5, 198.0),  # aizoo_demo2.jpg
    "NoMask": (182.1, 60.8, 278.7, 171.9),  # skimage_astronaut.png
}
CONTEXT = 0.3  # of the face's width, kept around it on each side (hair, shoulders, background)


@dataclass(frozen=True)
class FaceSprite:
    """One photo's face with context: ``image`` (h, w, 3) RGB and the face's box in it."""

    label: str
    image: np.ndarray
    box: tuple[float, float, float, float]

    @classmethod
    def cut(cls, label: str, photo: np.ndarray) -> FaceSprite:
        x1, y1, x2, y2 = FACE_BOXES[label]
        pad = CONTEXT * (x2 - x1)
        cx1, cy1 = max(0, int(x1 - pad)), max(0, int(y1 - pad))
        cx2, cy2 = min(photo.shape[1], int(np.ceil(x2 + pad))), min(photo.shape[0], int(np.ceil(y2 + pad)))
        return cls(label, photo[cy1:cy2, cx1:cx2].copy(), (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1))

    @property
    def face_width(self) -> float:
        return self.box[2] - self.box[0]

    def scaled(self, face_width: float) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """The sprite scaled so the face is ``face_width`` px wide, and the face box in it."""
        s = face_width / self.face_width
        w, h = max(1, round(self.image.shape[1] * s)), max(1, round(self.image.shape[0] * s))
        img = cv2.resize(self.image, (w, h), interpolation=cv2.INTER_AREA)
        sx, sy = w / self.image.shape[1], h / self.image.shape[0]
        x1, y1, x2, y2 = self.box
        return img, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


@dataclass(frozen=True)
class MovingFace:
    """A face ``width`` px wide whose sprite's top-left moves from ``start`` to ``end``;
    brightness gain and blur sigma go linearly from the first to the second value."""

    sprite: int  # index into FaceScene.sprites
    width: int
    start: tuple[float, float]
    end: tuple[float, float]
    gain: tuple[float, float] = (1.0, 1.0)
    blur: tuple[float, float] = (0.0, 0.0)
    flip: bool = False


@dataclass(frozen=True)
class FaceScene:
    """Faces moving on a static textured background of ``width`` x ``height``."""

    sprites: tuple[FaceSprite, ...]
    faces: tuple[MovingFace, ...]
    background: np.ndarray  # (height, width, 3) uint8
    frames: int

    @property
    def width(self) -> int:
        return self.background.shape[1]

    @property
    def height(self) -> int:
        return self.background.shape[0]

    def _placed(self, k: int, i: int) -> tuple[np.ndarray, int, int, tuple[float, float, float, float]]:
        f = self.faces[k]
        t = i / max(self.frames - 1, 1)
        img, box = self.sprites[f.sprite].scaled(f.width)
        if f.flip:
            img = img[:, ::-1]
            box = (img.shape[1] - box[2], box[1], img.shape[1] - box[0], box[3])
        sigma = f.blur[0] + t * (f.blur[1] - f.blur[0])
        if sigma > 0.05:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        gain = f.gain[0] + t * (f.gain[1] - f.gain[0])
        img = np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        x0 = round(f.start[0] + t * (f.end[0] - f.start[0]))
        y0 = round(f.start[1] + t * (f.end[1] - f.start[1]))
        return img, x0, y0, (box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0)

    def frame(self, i: int) -> np.ndarray:
        canvas = self.background.copy()
        for k in range(len(self.faces)):
            img, x0, y0, _ = self._placed(k, i)
            h, w = img.shape[:2]
            alpha = _feather(h, w)
            region = canvas[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
            canvas[y0 : y0 + h, x0 : x0 + w] = (alpha * img + (1 - alpha) * region).astype(np.uint8)
        return canvas

    def truth(self, i: int) -> list[dict]:
        """Frame ``i``'s faces: ``{"box": [x1, y1, x2, y2], "label", "width"}`` (width: the nominal px)."""
        out = []
        for k, f in enumerate(self.faces):
            _, _, _, box = self._placed(k, i)
            out.append({"box": [round(v, 2) for v in box], "label": self.sprites[f.sprite].label, "width": f.width})
        return out


def _feather(h: int, w: int) -> np.ndarray:
    """(h, w, 1) float32 alpha: 1 inside, ramping to 0 over the outer 15 % on every side, so a
    sprite has no hard rectangular edge for the detector to key on."""
    def ramp(n: int) -> np.ndarray:
        edge = max(1, int(0.15 * n))
        r = np.ones(n, np.float32)
        r[:edge] = np.linspace(0, 1, edge + 1, dtype=np.float32)[1:]
        r[n - edge :] = np.minimum(r[n - edge :], r[:edge][::-1])
        return r

    return (ramp(h)[:, None] * ramp(w)[None, :])[:, :, None]


def textured_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A static (height, width, 3) uint8 scene: smooth colour gradients, blocks and fine noise,
    so false positives have something to fire on (a flat canvas would flatter precision)."""
    small = rng.integers(30, 200, size=(max(2, height // 120), max(2, width // 120), 3)).astype(np.uint8)
    bg = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    for _ in range(max(4, width * height // 40000)):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(8, width // 6)), int(rng.integers(8, height // 6))
        bg[y : y + h, x : x + w] = rng.integers(0, 255, size=3)
    bg += rng.integers(-12, 13, size=bg.shape, dtype=np.int16)
    return np.clip(bg, 0, 255).astype(np.uint8)


def make_scene(
    photos: dict[str, np.ndarray], width: int, height: int, frames: int, widths: tuple[int, ...], *,
    seed: int, grid: tuple[int, int] = (3, 4),
) -> FaceScene:
    """A scene of ``grid`` rows x cols faces, one per cell, of the ``widths`` in turn (shifted
    by ``seed``, so a few seeds give every width both labels), masked and unmasked in turn,
    moving at random inside its cell."""
    rng = np.random.default_rng(seed)
    labels = sorted(photos)
    sprites = tuple(FaceSprite.cut(label, photos[label]) for label in labels)
    rows, cols = grid
    cw, ch = width // cols, height // rows
    faces = []
    for cell in range(rows * cols):
        s = (cell + seed) % len(sprites)  # labels alternate; each width twice in a row (both labels)
        fw = int(widths[(cell // len(sprites) + 3 * seed) % len(widths)])
        img, _ = sprites[s].scaled(fw)
        room_x, room_y = cw - img.shape[1], ch - img.shape[0]
        if room_x < 0 or room_y < 0:
            raise ValueError(f"a {fw} px face does not fit a {cw}x{ch} cell")
        r, c = divmod(cell, cols)
        pick = lambda: (c * cw + float(rng.uniform(0, room_x)), r * ch + float(rng.uniform(0, room_y)))  # noqa: E731
        faces.append(MovingFace(
            sprite=s, width=fw, start=pick(), end=pick(),
            gain=(float(rng.uniform(0.55, 1.3)), float(rng.uniform(0.55, 1.3))),
            blur=(float(rng.uniform(0, 1.2)), float(rng.uniform(0, 1.2))) if rng.random() < 0.5 else (0.0, 0.0),
            flip=bool(rng.random() < 0.5),
        ))
    return FaceScene(sprites, tuple(faces), textured_background(width, height, rng), frames)


def write_clip(path: Path, scene: FaceScene, *, ffmpeg: str, codec: str = "h264-main", fps: float = 25.0) -> Path:
    """Encodes ``scene`` to ``path`` and its true boxes to ``path`` with suffix ``.json``:
    ``{"width", "height", "frames": [[{"box", "label", "width"}, ...] per frame]}``."""
    write_video(path, scene, scene.frames, ffmpeg=ffmpeg, codec=codec, fps=fps, gop=int(fps))
    truth = {"width": scene.width, "height": scene.height, "frames": [scene.truth(i) for i in range(scene.frames)]}
    path.with_suffix(".json").write_text(json.dumps(truth))
    return path


def read_truth(path: Path) -> dict:
    """The ``.json`` :func:`write_clip` wrote beside the video ``path``."""
    return json.loads(path.with_suffix(".json").read_text())
