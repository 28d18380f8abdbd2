"""How a job is sized on a cluster (``size_job``): the auto settings and explicit ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.videogen import Scene, write_video
from jobs.config import DetectorConfig, JobConfig, ResourcesConfig, SamplingConfig
from jobs.errors import ConfigError
from jobs.pipeline.sizing import (
    JobTuner, MeasuredCosts, Sizing, WorkCosts, cgroup_cpu_quota, local_cpus, plan_costs, prior_costs, size_job,
)


def _config(*, resources: dict | None = None, detector: dict | None = None) -> JobConfig:
    return JobConfig(resources=ResourcesConfig(**(resources or {})), detector=DetectorConfig(**(detector or {})))


def test_two_cpus_two_single_thread_actors_beside_one_decoder() -> None:
    """Every frame: two 1-thread actors (not one of 2 threads: its threads wait for each other
    beside a decoder), which leave half a CPU reserved for the decoder."""
    assert size_job({"CPU": 2.0}, _config()) == Sizing(
        detector_workers=2, detector_threads=1, decoders=1, decode_cpus=0.5, detector_cpus=0.75
    )


def test_detector_bound_jobs_get_single_thread_actors_others_two_threads() -> None:
    from jobs.pipeline.sizing import DETECTOR_BOUND_SHARE

    below = WorkCosts(decode_s=DETECTOR_BOUND_SHARE * 0.99, detect_s=1 - DETECTOR_BOUND_SHARE * 0.99)
    above = WorkCosts(decode_s=DETECTOR_BOUND_SHARE * 1.01, detect_s=1 - DETECTOR_BOUND_SHARE * 1.01)
    assert size_job({"CPU": 8.0}, _config(), below).detector_threads == 1
    assert size_job({"CPU": 8.0}, _config(), above).detector_threads == 2
    assert size_job({"CPU": 1.0}, _config(), above).detector_threads == 1  # never more threads than CPUs
    assert size_job({"CPU": 8.0}, _config(detector={"threads": 3}), below).detector_threads == 3  # the user's


def test_sixteen_cpus_every_frame_most_to_detectors() -> None:
    """Every frame of 1080p: ~3.3 ms of decoding to 9 ms of detecting, so ~27 % of 16 CPUs
    decode (4.3, so 5 tasks) and 13 actors take the detector's 11.7 CPUs and half a CPU more;
    the decoders share the 3 CPUs the actors leave."""
    sizing = size_job({"CPU": 16.0}, _config())
    assert sizing == Sizing(detector_workers=13, detector_threads=1, decoders=5, decode_cpus=0.6)


def test_one_cpu_and_no_cpus_listed() -> None:
    # one actor reserving all of it would keep every probe and decoder waiting: it leaves half
    one = Sizing(detector_workers=1, detector_threads=1, decoders=1, decode_cpus=0.5, detector_cpus=0.5)
    assert size_job({"CPU": 1.0}, _config()) == one
    assert size_job({}, _config()) == one  # a cluster that lists no CPUs counts as one


def test_gpus_one_actor_per_detector_gpus_and_every_cpu_decodes() -> None:
    config = _config(resources={"detector_gpus": 1})
    sizing = size_job({"CPU": 16.0, "GPU": 2.0}, config)
    assert sizing.detector_workers == 2 and sizing.detector_threads is None
    assert sizing.decoders == int((16 - 2 * config.resources.detector_cpus) // config.resources.decode_cpus)
    half = size_job({"CPU": 16.0, "GPU": 2.0}, _config(resources={"detector_gpus": 0.5}))
    assert half.detector_workers == 4


def test_too_few_gpus_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="detector_gpus is 1 but the Ray cluster has 0 GPUs"):
        size_job({"CPU": 8.0}, _config(resources={"detector_gpus": 1}))


def test_explicit_settings_win() -> None:
    config = _config(resources={"detector_workers": 3, "decode_cpus": 2}, detector={"threads": 4})
    sizing = size_job({"CPU": 16.0}, config)
    assert sizing.detector_workers == 3 and sizing.detector_threads == 4
    assert sizing.decoders == int((16 - 3 * config.resources.detector_cpus) // 2)


def test_at_least_one_decoder_when_actors_take_every_cpu() -> None:
    """Actors reserving every CPU would keep the probes and decoders from ever running (the
    job would wait forever): together they leave half a CPU, which a decoder reserves."""
    def fits(s: Sizing, cpus: float) -> bool:
        return s.detector_workers * s.detector_cpus + s.decoders * s.decode_cpus <= cpus + 1e-9

    sizing = size_job({"CPU": 4.0}, _config(resources={"detector_workers": 8}))
    assert sizing.detector_workers == 8 and sizing.detector_cpus == 0.4375 and fits(sizing, 4.0)
    assert sizing.decoders == 1 and sizing.decode_cpus == 0.5
    two = size_job({"CPU": 2.0}, _config(resources={"detector_workers": 2}, detector={"threads": 1}))
    assert two.detector_cpus == 0.75 and two.decoders == 1 and two.decode_cpus == 0.5
    part = size_job({"CPU": 2.5}, _config(resources={"detector_workers": 2}))
    assert part.detector_cpus == 1.0 and part.decoders == 1 and part.decode_cpus == 0.5
    # auto sizing with one thread per actor at every frame: the actors' share is every CPU
    auto = size_job({"CPU": 2.0}, _config(detector={"threads": 1}), WorkCosts(decode_s=0.001, detect_s=0.012))
    assert auto.detector_workers == 2 and auto.decoders >= 1 and fits(auto, 2.0) and auto.decode_cpus > 0
    gpu = size_job({"CPU": 1.0, "GPU": 1.0}, _config(resources={"detector_gpus": 1, "detector_cpus": 1}))
    assert gpu.detector_cpus == 0.5 and gpu.decoders == 1 and gpu.decode_cpus == 0.5


# --- sizing from the work: sampling makes the job decode-bound --------------------------------


def _sampled(**sampling: object) -> JobConfig:
    return JobConfig(sampling=SamplingConfig(**sampling))


def test_decode_share_follows_the_sampling() -> None:
    every = prior_costs(_sampled()).decode_share
    stride = prior_costs(_sampled(stride=15)).decode_share
    keys = prior_costs(_sampled(keyframes=True)).decode_share
    fps2 = prior_costs(_sampled(fps=2.0)).decode_share
    assert every < 0.4 < 0.6 < stride  # detector-bound at every frame, decode-bound at 2 fps
    assert fps2 == pytest.approx(stride)  # 2 fps of 30 fps footage is stride 15
    assert keys < 0.5  # one seek and one frame per sample


def test_two_cpus_decode_share_over_half_gets_two_decoders() -> None:
    """Measured at 2 fps of mixed 720p/1080p on a busy 2-core machine: 26 ms decoding to
    15.5 ms detecting per frame. One decoder would take 26 ms a frame where both cores
    together need (26 + 15.5) / 2 = 20.8: two decoders."""
    sizing = size_job({"CPU": 2.0}, _sampled(stride=15), WorkCosts(0.026, 0.0155))
    assert sizing.decoders == 2 and sizing.decode_cpus == 0.5  # beside one 2-thread actor
    assert sizing.detector_workers == 1 and sizing.detector_threads == 2


def test_two_cpus_sampled_two_decoders_of_half_a_cpu_beside_the_actor() -> None:
    """On 2 CPUs at every 15th frame, one decoder would leave a core idle: two decode tasks
    reserve half a CPU each beside the actor's one, so both run. Decode-bound: the actor
    keeps 2 threads (the cores are the decoders' most of the time)."""
    sizing = size_job({"CPU": 2.0}, _sampled(stride=15), prior_costs(_sampled(stride=15)))
    assert sizing == Sizing(detector_workers=1, detector_threads=2, decoders=2, decode_cpus=0.5)
    assert sizing.detector_workers * 1 + sizing.decoders * sizing.decode_cpus <= 2.0


def test_a_decode_share_just_under_one_cpu_keeps_a_spare_decoder() -> None:
    """Measured at every 15th frame of 720p + 1080p on 2 cores: 17.0 ms decoding to 17.2 ms
    detecting per frame over the job, but the 1080p video alone decodes ~1.5x that. A share of
    0.43 (0.86 CPU) used to give one decoder: once the 720p video was done the detector waited
    on it, the cores ~75% busy, and the tuner flapped between one and two decoders as the
    share crossed a half. The quarter CPU to spare keeps two; every frame keeps one."""
    config = _sampled(stride=15)
    start = size_job({"CPU": 2.0}, config, prior_costs(config))
    tuner = JobTuner(start, config, prior_costs(config))
    for share in (0.38, 0.43, 0.49, 0.51):
        tuner.observe(100, decode_s=100 * share, detect_s=100 * (1 - share))
        assert tuner.update({"CPU": 2.0}) is None and tuner.sizing.decoders == 2
    assert size_job({"CPU": 2.0}, config, WorkCosts(0.0037, 0.0063)).decoders == 1  # a share of 0.37: 0.99 CPU
    assert size_job({"CPU": 2.0}, _config(), WorkCosts(0.0055, 0.0165)).decoders == 1  # every frame, 0.25
    assert size_job({"CPU": 4.0}, config, WorkCosts(1.0, 0.0)).decoders == 4  # never more than one per CPU


def test_sixteen_cpus_sampled_most_to_decoders() -> None:
    sizing = size_job({"CPU": 16.0}, _sampled(stride=15), prior_costs(_sampled(stride=15)))
    assert sizing.detector_workers == 4 and sizing.detector_threads == 2 and sizing.decoders >= 11
    assert sizing.detector_workers * 1 + sizing.decoders * sizing.decode_cpus <= 16.0


def test_plan_costs_count_skipped_frames_and_seeks() -> None:
    dense = plan_costs(kept=100, decoded=1500, seeks=0, megapixels=2.0)
    keys = plan_costs(kept=100, decoded=100, seeks=100, megapixels=2.0)
    every = plan_costs(kept=100, decoded=100, seeks=0, megapixels=2.0)
    assert dense.decode_s > keys.decode_s > every.decode_s
    assert plan_costs(kept=1, decoded=1, seeks=0, megapixels=0.92).decode_s < every.decode_s  # 720p decodes cheaper


def test_tuner_follows_measured_costs_and_a_growing_cluster() -> None:
    """The decoders follow what the job measures (not the plan's guess) and the CPUs the
    cluster lists when the tuner looks again: an autoscaler's new nodes get decoders."""
    config = _sampled(stride=15)
    start = size_job({"CPU": 2.0}, config, prior_costs(config))
    tuner = JobTuner(start, config, prior_costs(config), every_s=2.0)
    assert tuner.due(0.0) and not tuner.due(1.0) and tuner.due(2.5)
    assert tuner.update({"CPU": 2.0}) is None  # nothing new: nothing changes
    # the job measures detector-bound costs (e.g. the footage is mostly keyframes): one decoder
    # (the 2-thread actor started for a sampled job stays; a second would not fit beside it)
    tuner.observe(64, decode_s=64 * 0.002, detect_s=64 * 0.009)
    assert tuner.update({"CPU": 2.0}) == Sizing(1, 2, 1, 1.0)
    # the cluster grows to 10 CPUs, the job decode-bound again: decoders for the new CPUs
    tuner.observe(6400, decode_s=6400 * 0.05, detect_s=0.0)
    grown = tuner.update({"CPU": 10.0}, at_s=12.0)
    assert grown is not None and grown.detector_workers == 1 and grown.decoders >= 8
    assert grown.decoders * grown.decode_cpus <= 10.0 - 1
    assert [c["decoders"] for c in tuner.changes] == [1, grown.decoders] and tuner.changes[-1]["at_s"] == 12.0


def test_a_growing_cluster_gets_detector_actors_too_and_none_is_ever_stopped() -> None:
    """Every frame (detector-bound): 1 CPU holds one actor; at 10 CPUs the job wants the
    actors :func:`size_job` would start there, and keeps them when the CPUs drop."""
    config = _config()
    every = WorkCosts(decode_s=0.002, detect_s=0.009)
    start = size_job({"CPU": 1.0}, config, every)
    assert start.detector_workers == 1
    tuner = JobTuner(start, config, every)
    grown = tuner.update({"CPU": 10.0}, at_s=5.0)
    # the first actor reserved half a CPU (on 1 CPU); the new ones reserve as much, and there
    # are as many as size_job starts on 10 CPUs: 8.2 CPUs of detecting and half a CPU, rounded up
    assert grown is not None and grown.detector_workers == size_job({"CPU": 10.0}, config, every).detector_workers == 9
    assert grown.decoders >= 1 and grown.decoders * grown.decode_cpus + 9 * start.detector_cpus <= 10.0
    assert tuner.changes[-1]["detector_workers"] == 9 and tuner.changes[-1]["at_s"] == 5.0
    shrunk = tuner.update({"CPU": 2.0})  # a node left: its actors died with it; none is stopped here
    assert shrunk is not None and shrunk.detector_workers == 9
    # decode-bound costs do not take actors away either
    tuner.observe(6400, decode_s=6400 * 0.05, detect_s=6400 * 0.001)
    assert (tuner.update({"CPU": 10.0}) or tuner.sizing).detector_workers == 9


def test_growing_gpus_get_actors_and_explicit_workers_stay() -> None:
    gpu = _config(resources={"detector_gpus": 1})
    start = size_job({"CPU": 8.0, "GPU": 1.0}, gpu)
    grown = JobTuner(start, gpu, WorkCosts(0.002, 0.009)).update({"CPU": 16.0, "GPU": 3.0})
    assert grown is not None and grown.detector_workers == 3 and grown.decoders == int(16 - 3)
    fixed = _config(resources={"detector_workers": 2})
    start = size_job({"CPU": 4.0}, fixed)
    grown = JobTuner(start, fixed, WorkCosts(0.002, 0.009)).update({"CPU": 20.0})
    assert grown is not None and grown.detector_workers == 2 and grown.decoders == 18


def test_measured_costs_wait_for_enough_frames() -> None:
    m = MeasuredCosts()
    m.add(16, 0.16, 0.16)
    assert m.costs() is None
    m.add(64, 0.64, 0.64)
    assert m.costs() == WorkCosts(0.01, 0.01)


# --- the CPUs this process may use: affinity and the container's quota -------------------------


def _cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> dict[str, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    (tmp_path / "proc_cgroup").write_text(proc)
    return {"cgroup_root": root, "proc_cgroup": tmp_path / "proc_cgroup"}


def test_cgroup_v2_quota_of_two_cpus(tmp_path: Path) -> None:
    paths = _cgroup(tmp_path, "0::/docker/abc\n", {"docker/abc/cpu.max": "200000 100000\n", "cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(**paths) == 2.0
    assert local_cpus(**paths) == min(2, len(os.sched_getaffinity(0)))


def test_cgroup_v2_parent_quota_applies_and_fractions_round_down(tmp_path: Path) -> None:
    paths = _cgroup(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/pod1/ctr/cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "150000 100000\n",
    })
    assert cgroup_cpu_quota(**paths) == 1.5
    assert local_cpus(**paths) == 1


def test_cgroup_v2_in_a_container_namespace_reads_its_root(tmp_path: Path) -> None:
    paths = _cgroup(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})
    assert cgroup_cpu_quota(**paths) == 0.5
    assert local_cpus(**paths) == 1  # at least one


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    proc = "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n"
    paths = _cgroup(tmp_path, proc, {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_quota(**paths) == 3.0
    unlimited = _cgroup(tmp_path / "u", proc, {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_quota(**unlimited) is None


def test_no_quota_or_unreadable_files(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(cgroup_root=tmp_path / "none", proc_cgroup=tmp_path / "missing") is None
    paths = _cgroup(tmp_path, "0::/a\n", {"a/cpu.max": "garbage\n"})
    assert cgroup_cpu_quota(**paths) is None
    assert local_cpus(**paths) == len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_taskset_one_core_gives_one_cpu_and_an_embedded_ray_of_one() -> None:
    """A process pinned to one core (``taskset -c 0``) sizes for one CPU, and the embedded
    Ray it starts lists one CPU, whatever ``os.cpu_count()`` says."""
    if shutil.which("taskset") is None:
        pytest.skip("taskset is not installed")
    code = (
        "import os, json\n"
        "from jobs.config import RayConfig\n"
        "from jobs.pipeline.session import ray_session\n"
        "from jobs.pipeline.sizing import local_cpus\n"
        "with ray_session(RayConfig(object_store_mb=80)) as ray:\n"
        "    cpus = ray.cluster_resources().get('CPU')\n"
        "print(json.dumps({'local': local_cpus(), 'count': os.cpu_count(), 'ray': cpus}))\n"
    )
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["local"] == 1 and out["ray"] == 1.0
    assert out["count"] == os.cpu_count()  # the host's count is not what sized it


@pytest.mark.slow  # spawns `maskjobs run` on a real embedded Ray
def test_a_job_pinned_to_one_core_runs_to_the_end(tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path) -> None:
    """On one CPU the detector actor used to reserve the whole CPU: the probes and decode tasks
    then waited for it forever. The actor now leaves half a CPU, and the job ends."""
    if shutil.which("taskset") is None:
        pytest.skip("taskset is not installed")
    root = tmp_path / "in"
    root.mkdir()
    write_video(root / "a.mp4", scene, 24, ffmpeg=ffmpeg, gop=8)
    out = tmp_path / "out"
    proc = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", "from jobs.cli.main import app; app()", "run", str(root),
         "--out", str(out), "--weights", str(caffe_weights), "--stride", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "done" and job["sizing"]["detector_cpus"] == 0.5 and job["sizing"]["decode_cpus"] == 0.5
    assert len(pq.read_table(out / "frames")) == 12
