"""The Parquet schemas of a job's output, and building frame tables from detector output."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detector.spec import is_masked

TIMESTAMP = pa.timestamp("us", tz="UTC")  # an instant; videos.parquet's ``timezone`` says the local zone

DETECTION_TYPE = pa.struct(
    [
        ("label", pa.string()),
        ("score", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("track", pa.int32()),  # the person's track in its video (null: none, or not tracked yet)
    ]
)

FRAMES_SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("faces", pa.int32()),
        ("masked", pa.int32()),
        ("unmasked", pa.int32()),
        ("compliance", pa.float32()),
        ("detections", pa.list_(DETECTION_TYPE)),
        ("camera", pa.string()),  # the video's camera (set by the finishing pass)
        ("timestamp", TIMESTAMP),  # wall-clock time of the frame (null: the video's start is unknown)
    ]
)

VIDEOS_SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("path", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("frames_total", pa.int64()),
        ("frames_processed", pa.int64()),
        ("fps", pa.float64()),
        ("duration_s", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("faces", pa.int64()),
        ("masked", pa.int64()),
        ("unmasked", pa.int64()),
        ("compliance", pa.float32()),
        ("people", pa.int64()),  # tracks (people seen) in the video
        ("people_unmasked", pa.int64()),  # tracks whose majority label is NoMask
        ("damaged_frame", pa.int64()),  # status "partial": the sampled frame where decoding stopped
        ("size_bytes", pa.int64()),  # the file's identity when it was processed (jobs/identity.py)
        ("mtime_ns", pa.int64()),
        ("content_hash", pa.string()),  # SHA-256 of its size, first and last 64 KiB
        # what the compliance covers (jobs/results/coverage.py): the narrowest face both labels
        # are reliably found at in the mode run, and the figures over faces at least that wide
        ("min_face_px", pa.float32()),
        ("faces_reliable", pa.int64()),
        ("masked_reliable", pa.int64()),
        ("compliance_reliable", pa.float32()),
        ("faces_near_min", pa.int64()),  # faces narrower than 1.25 x min_face_px
        ("sampling_rate", pa.float64()),  # frames analysed per second of video (effective sampling rate)
        ("camera", pa.string()),
        ("start", TIMESTAMP),  # wall-clock time of the first frame (null: unknown)
        ("end", TIMESTAMP),  # start + duration
        ("start_source", pa.string()),  # mapping | file_name | creation_time (null: unknown)
        ("timezone", pa.string()),  # the zone the start was given in (IANA name or +HH:MM)
    ]
)

TRACKS_SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("track", pa.int32()),
        ("first_s", pa.float64()),
        ("last_s", pa.float64()),
        ("frames", pa.int32()),  # sampled frames the track was detected in
        ("label", pa.string()),  # majority label of its detections
        ("masked_share", pa.float32()),
        ("best_frame", pa.int64()),  # its highest-scoring detection with the majority label
        ("best_time_s", pa.float64()),
        ("score", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("thumbnail", pa.binary()),  # JPEG of the face in the best frame (null: not decoded)
        ("camera", pa.string()),
        ("first_time", TIMESTAMP),  # first_s and last_s as wall-clock times (null: unknown start)
        ("last_time", TIMESTAMP),
        ("thumbnail_privacy", pa.string()),  # how the thumbnail shows the face: blur | pixelate | raw
    ]
)


def frames_table(
    video: np.ndarray,
    frame: np.ndarray,
    time_s: np.ndarray,
    counts: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray,
    class_names: tuple[str, ...],
) -> pa.Table:
    """One row per frame.

    Args:
        video, frame, time_s, counts: (F,) per frame; ``counts`` faces per frame.
        labels (K,) int, scores (K,) float, boxes (K, 4) float: every face, frame after frame.
        class_names: the label names (:data:`detector.spec.CLASS_NAMES`; label
            :data:`~detector.spec.MASK_INDEX` is counted as masked).
    """
    counts = np.asarray(counts, dtype=np.int32)
    labels = np.asarray(labels, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    masked_face = is_masked(labels).astype(np.int32)
    frame_of = np.repeat(np.arange(len(counts)), counts)  # each face's frame (row)
    masked = np.bincount(frame_of, weights=masked_face, minlength=len(counts)).astype(np.int32)
    unmasked = counts - masked
    with np.errstate(invalid="ignore", divide="ignore"):
        compliance = np.where(counts > 0, masked / np.maximum(counts, 1), np.nan).astype(np.float32)
    names = pa.array(np.asarray(class_names, dtype=object)[labels] if len(labels) else [], pa.string())
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    structs = pa.StructArray.from_arrays(
        [
            names, pa.array(np.asarray(scores, np.float32)), *(pa.array(boxes[:, i]) for i in range(4)),
            pa.nulls(len(boxes), pa.int32()),
        ],
        fields=list(DETECTION_TYPE),
    )
    detections = pa.ListArray.from_arrays(pa.array(offsets), structs, type=pa.list_(DETECTION_TYPE))
    return pa.Table.from_arrays(
        [
            pa.array(video, pa.string()),
            pa.array(np.asarray(frame, np.int64)),
            pa.array(np.asarray(time_s, np.float64)),
            pa.array(counts),
            pa.array(masked),
            pa.array(unmasked.astype(np.int32)),
            pa.array(compliance, mask=np.isnan(compliance)),
            detections,
            pa.nulls(len(counts), pa.string()),
            pa.nulls(len(counts), TIMESTAMP),
        ],
        schema=FRAMES_SCHEMA,
    )


def with_tracks(table: pa.Table, tracks: np.ndarray) -> pa.Table:
    """``table`` (FRAMES_SCHEMA) with each detection's ``track`` set.

    Args:
        tracks: (K,) int, one per detection in row order, then list order; < 0 means none (null).
    """
    column = table.column("detections").combine_chunks()
    flat = column.flatten()
    if len(flat) != len(tracks):
        raise ValueError(f"{len(tracks)} track ids for {len(flat)} detections")
    tracks = np.asarray(tracks, np.int64)
    fields = [flat.field(name) for name in DETECTION_TYPE.names if name != "track"]
    fields.append(pa.array(tracks.astype(np.int32), pa.int32(), mask=tracks < 0))
    structs = pa.StructArray.from_arrays(fields, fields=list(DETECTION_TYPE))
    offsets = column.offsets
    if column.offset:  # a sliced chunk: rebase its offsets on the flattened values
        offsets = pc.subtract(offsets, offsets[0])
    detections = pa.ListArray.from_arrays(offsets, structs, type=pa.list_(DETECTION_TYPE), mask=column.is_null())
    return table.set_column(table.schema.get_field_index("detections"), "detections", detections)


def with_video_meta(table: pa.Table, cameras: dict[str, str], starts_us: dict[str, int | None]) -> pa.Table:
    """``table`` (FRAMES_SCHEMA, or an older one without the columns) with ``camera`` and
    ``timestamp`` set per row: the video's camera, its start (µs since the epoch, UTC) plus
    ``time_s``; null where the video's start is unknown."""
    videos = table.column("video").to_numpy(zero_copy_only=False)
    uniq, inverse = np.unique(videos, return_inverse=True) if len(videos) else (np.array([], object), np.array([], int))
    camera = np.array([cameras.get(v) for v in uniq], dtype=object)[inverse] if len(videos) else []
    start = np.array([starts_us.get(v) for v in uniq], dtype=object)[inverse] if len(videos) else np.array([], object)
    known = np.array([s is not None for s in start], bool)
    offset = np.round(table.column("time_s").to_numpy(zero_copy_only=False) * 1e6).astype(np.int64)
    stamp = np.where(known, np.where(known, start, 0).astype(np.int64) + offset, 0)
    columns = {
        "camera": pa.array(camera, pa.string()),
        "timestamp": pa.array(stamp, pa.int64(), mask=~known).cast(TIMESTAMP),
    }
    for name, column in columns.items():
        i = table.schema.get_field_index(name)
        table = table.append_column(name, column) if i < 0 else table.set_column(i, name, column)
    return table
