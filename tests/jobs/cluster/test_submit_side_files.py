"""``maskjobs submit`` ships the zones file and the start-times mapping with the job, so the
head reads the same files the user named here (no cluster needed: the staged working_dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cluster.submit import CONFIG_NAME, staged_submission
from jobs.config import resolve_config
from jobs.errors import InputError


def test_zones_and_start_times_travel_in_the_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zones = tmp_path / "zones.yaml"
    zones.write_text("cameras:\n  n:\n    lines:\n      a: [[0, 0], [1, 1]]\n")
    starts = tmp_path / "starts.csv"
    starts.write_text("video,start\na.mp4,2026-03-16T08:00:00\n")
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"x")
    cfg = resolve_config(None, {"zones.file": str(zones), "metadata.start_times": str(starts),
                                "detector.weights": str(weights)})
    with staged_submission(["/videos"], "/out", cfg, overwrite=False, ship_weights=False, check_inputs=False) as job:
        stage = Path(job.runtime_env["working_dir"])
        assert (stage / "maskjobs-zones.yaml").read_text() == zones.read_text()
        assert (stage / "maskjobs-start-times.csv").read_text() == starts.read_text()
        monkeypatch.chdir(stage)  # the entrypoint's cwd on the head
        shipped = resolve_config(Path(CONFIG_NAME))
    assert shipped.zones.file == "maskjobs-zones.yaml" and shipped.metadata.start_times == "maskjobs-start-times.csv"

    missing = resolve_config(None, {"zones.file": str(tmp_path / "nope.yaml"), "detector.weights": str(weights)})
    with pytest.raises(InputError, match=r"nope.yaml: no such file \(zones.file\)"):
        with staged_submission(["/v"], "/out", missing, overwrite=False, ship_weights=False, check_inputs=False):
            pass
