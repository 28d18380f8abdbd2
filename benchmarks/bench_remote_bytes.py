"""Bytes read from a video behind HTTP for the probe and for each keyframe-aligned shard, against
the file's size: decord given the URL itself, and maskjobs' way (staged once per node, jobs.stage).

    python -m benchmarks.bench_remote_bytes [--seconds 120] [--shard-frames 1024] [--size 640x360]

Serves a generated H.264 MP4 (moov at the end, as cameras write it; and a faststart copy) from
a local HTTP server that honours ``Range`` and counts the bytes it sends, then runs the job's own
code on its URL: :func:`jobs.pipeline.probe.probe_video`, and :func:`jobs.video.open_video` +
``read`` over each shard's frames (the shards :func:`jobs.pipeline.plan.plan_shards` cuts), and
decord's ``VideoReader`` on the URL doing the same. The
counts are bytes the server wrote to the socket: an upper bound (a connection FFmpeg drops after
a seek may have had up to a socket buffer in flight, at most 64 KiB here by ``SO_SNDBUF``).
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    sent = 0
    requests = 0
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        path = self.root / self.path.split("?", 1)[0].lstrip("/")
        size = path.stat().st_size
        start, end = 0, size - 1
        match = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1) or 0)
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        with type(self).lock:
            type(self).requests += 1
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            try:
                while left > 0:
                    chunk = f.read(min(16384, left))
                    self.wfile.write(chunk)
                    left -= len(chunk)
                    with type(self).lock:
                        type(self).sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass

    @classmethod
    def take(cls) -> tuple[int, int]:
        with cls.lock:
            out = (cls.sent, cls.requests)
            cls.sent = cls.requests = 0
        return out


def _make_video(path: Path, seconds: int, size: str, *, faststart: bool) -> None:
    import imageio_ffmpeg

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi",
        "-i", f"testsrc2=size={size}:rate=25,noise=alls=12:allf=t", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "26", "-g", "50", "-pix_fmt", "yuv420p",
    ]
    if faststart:
        cmd += ["-movflags", "+faststart"]
    subprocess.run([*cmd, str(path)], check=True)


def _decord_on_url(url: str, frames: np.ndarray | None) -> None:
    """decord given the URL itself: open (what a probe does), and read ``frames`` if given."""
    import decord

    from jobs.video import read_frames

    reader = decord.VideoReader(url, ctx=decord.cpu(0), num_threads=1)
    keyframes = np.asarray(reader.get_key_indices(), dtype=np.int64)
    if frames is not None:
        for _ in read_frames(reader, frames, keyframes):
            pass
    del reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--shard-frames", type=int, default=1024)
    parser.add_argument("--size", default="640x360")
    args = parser.parse_args()

    from jobs.config import SamplingConfig
    from jobs.pipeline.plan import plan_shards
    from jobs.pipeline.probe import probe_video
    from jobs.video import ProbedVideo, open_video

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MASKJOBS_STAGE_DIR"] = str(root / "stage")  # one node's stage cache
        for name, faststart in (("camera.mp4", False), ("faststart.mp4", True)):
            _make_video(root / name, args.seconds, args.size, faststart=faststart)
        handler = type("Handler", (_CountingHandler,), {"root": root})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            for name in ("camera.mp4", "faststart.mp4"):
                url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
                size = os.path.getsize(root / name)
                handler.take()
                info = probe_video(url)  # staged: the node's first read copies the file once
                staged_probe, _ = handler.take()
                shards = plan_shards(
                    [ProbedVideo(name, url, info)], SamplingConfig(), shard_frames=args.shard_frames, pack_frames=0,
                )
                print(f"\n{name}: {size:,} bytes, {info.frames_total} frames {info.width}x{info.height}, "
                      f"{len(info.keyframes)} keyframes, {len(shards)} shards of <= {args.shard_frames} frames")
                print(f"{'read':<34} {'decord on the URL':>30} {'staged once per node':>30}")
                _decord_on_url(url, None)
                got, requests = handler.take()
                print(f"{'probe':<34} {got:>14,} ({got / size:6.1%}, {requests:2d} req) "
                      f"{staged_probe:>14,} ({staged_probe / size:6.1%})")
                totals = [got, staged_probe]
                for shard in shards:
                    frames = np.asarray(shard.segments[0].frames, dtype=np.int64)
                    _decord_on_url(url, frames)
                    direct, requests = handler.take()
                    with open_video(url) as video:
                        for _ in video.read(frames):
                            pass
                    staged, _ = handler.take()
                    totals = [totals[0] + direct, totals[1] + staged]
                    print(f"{'shard frames %d-%d' % (frames[0], frames[-1]):<34} {direct:>14,} "
                          f"({direct / size:6.1%}, {requests:2d} req) {staged:>14,} ({staged / size:6.1%})")
                print(f"{'probe + all shards, x the file':<34} {totals[0] / size:>30.2f} {totals[1] / size:>30.2f}")
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
