"""Linking face detections across a video's sampled frames into tracks (one per person)."""

from __future__ import annotations

from tracking.bytetrack import ByteTracker, box_iou, track_sequence

__all__ = ["ByteTracker", "box_iou", "track_sequence"]
