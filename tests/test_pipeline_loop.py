"""The pipelined detection loop makes the same bytes as the sequential one, in image-id order,
with bounded memory, and a worker's error surfaces on the caller's thread naming the file."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from mapgate import detections as loop
from mapgate.backends import get_backend
from mapgate.backends.base import BuildContext, Runner
from mapgate.dataset import BUNDLED_ANNOTATIONS, BUNDLED_ROOT, CocoDataset
from mapgate.detections import STAGES, run_detections
from mapgate.errors import DataError

CASES = [("yolo-fastest-1.1-320", "opencv", None), ("yolox-nano-416", "onnxruntime", None)]


@pytest.fixture(scope="module")
def engines() -> Path:
    return Path(__file__).resolve().parent.parent / "engines"  # the conversion cache every test shares


@pytest.mark.slow
@pytest.mark.parametrize("model_name,backend,precision", CASES, ids=[c[0] for c in CASES])
def test_pipelined_detections_are_byte_identical_to_sequential(bundled_models, require_backend, engines,
                                                               model_name, backend, precision) -> None:
    require_backend(backend)
    model = bundled_models[model_name]
    data = CocoDataset(max_images=30)
    with get_backend(backend).runner(model, precision, BuildContext(engines_dir=engines)) as runner:
        sequential = run_detections(model, runner, data, progress=False, workers=0)
        for workers in (1, 2, 3):
            piped = run_detections(model, runner, data, progress=False, workers=workers)
            assert orjson.dumps(piped.detections) == orjson.dumps(sequential.detections), f"workers={workers}"
            assert piped.image_ids == sequential.image_ids == data.image_ids
            assert set(piped.timings_ms) == set(STAGES) and all(v > 0 for v in piped.timings_ms.values())
            assert piped.wall_ms_per_image > 0 and piped.workers == workers
    ids = [d["image_id"] for d in sequential.detections]
    assert ids == sorted(ids)  # records come out in image-id order


class _SlowRunner(Runner):
    """A real engine behind a slow infer(), recording how many images were decoded ahead of it."""

    backend = "opencv"

    def __init__(self, inner: Runner, started: list[int]) -> None:
        super().__init__()
        self.inner, self.started, self.inferred, self.ahead = inner, started, 0, []

    def activate_impl(self) -> None:
        self.inner.activate()

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.02)  # a slower engine than the decoders: the queue fills up and must stop growing
        self.ahead.append(len(self.started) - self.inferred)
        self.inferred += batch.shape[0]
        return self.inner.infer(batch)

    def supports_batch(self, n: int) -> bool:
        return self.inner.supports_batch(n)


@pytest.mark.parametrize("workers,batch_size", [(2, 1), (3, 4)])
def test_pipelined_loop_holds_at_most_two_inputs_per_worker(bundled_models, require_backend, engines, monkeypatch,
                                                            workers, batch_size) -> None:
    require_backend("opencv")
    model = bundled_models["yolo-fastest-1.1-320"]
    started: list[int] = []
    lock = threading.Lock()
    real_prepare = loop._prepare

    def counting_prepare(m, dataset, image_id):  # noqa: ANN001, ANN202
        with lock:
            started.append(image_id)
        return real_prepare(m, dataset, image_id)

    monkeypatch.setattr(loop, "_prepare", counting_prepare)
    runner = _SlowRunner(get_backend("opencv").runner(model, None, BuildContext(engines_dir=engines)), started)
    with runner:
        run = run_detections(model, runner, CocoDataset(max_images=24), progress=False, workers=workers,
                             batch_size=batch_size)
    assert run.batch_size == batch_size
    bound = max(loop.QUEUE_PER_WORKER * workers, batch_size) + batch_size  # the queue + the batch being inferred
    assert max(runner.ahead[1:]) <= bound  # [0] is the warm-up
    assert max(runner.ahead[1:]) >= batch_size  # and the decoders did run ahead of the engine


def test_a_broken_image_in_a_worker_is_an_error_naming_the_file(tmp_path: Path, bundled_models, require_backend,
                                                                engines) -> None:
    require_backend("opencv")
    gt = json.loads(BUNDLED_ANNOTATIONS.read_text())
    keep = sorted(int(i["id"]) for i in gt["images"])[:8]
    gt["images"] = [i for i in gt["images"] if int(i["id"]) in keep]
    gt["annotations"] = [a for a in gt["annotations"] if int(a["image_id"]) in keep]
    (tmp_path / "images").mkdir()
    for img in gt["images"]:
        shutil.copy(BUNDLED_ROOT / "val2017" / img["file_name"], tmp_path / "images" / img["file_name"])
    broken = sorted(gt["images"], key=lambda i: int(i["id"]))[5]["file_name"]
    (tmp_path / "images" / broken).write_bytes(b"not a jpeg")
    (tmp_path / "ann.json").write_text(json.dumps(gt))
    data = CocoDataset(tmp_path / "ann.json", tmp_path / "images")
    model = bundled_models["yolo-fastest-1.1-320"]
    with get_backend("opencv").runner(model, None, BuildContext(engines_dir=engines)) as runner:
        with pytest.raises(DataError, match=broken):
            run_detections(model, runner, data, progress=False, workers=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("mapgate-")]  # no thread left behind


def test_negative_workers_are_refused(bundled_models) -> None:
    with pytest.raises(ValueError, match="workers"):
        run_detections(bundled_models["yolo-fastest-1.1-320"], None, CocoDataset(max_images=1), workers=-1)  # type: ignore[arg-type]


@pytest.mark.parametrize("argv", [["--workers", "-1"], ["--workers", "two"], ["--batch-size", "0"]])
def test_bad_loop_options_are_usage_errors_at_parse_time(argv: list[str], capsys) -> None:
    from mapgate.cli import EXIT_USAGE, main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "yolo-fastest-1.1-320", "--backend", "opencv", *argv])
    assert exc.value.code == EXIT_USAGE and argv[0] in capsys.readouterr().err


def test_eval_with_workers_and_batches_writes_the_sequential_bytes(tmp_path: Path, require_backend) -> None:
    require_backend("opencv")
    from mapgate.cli import main

    base = ["eval", "--model", "yolo-fastest-1.1-320", "--backend", "opencv", "--max-images", "6", "--no-cache",
            "--no-progress"]
    assert main([*base, "--workers", "0", "--out", str(tmp_path / "seq")]) == 0
    assert main([*base, "--workers", "2", "--batch-size", "4", "--out", str(tmp_path / "piped")]) == 0
    assert (tmp_path / "piped" / "detections.json").read_bytes() == (tmp_path / "seq" / "detections.json").read_bytes()


@pytest.mark.parametrize("option", ["--workers=-1", "--batch-size=0", "--shard=5/4"])
def test_bad_loop_options_are_refused_by_pytest_at_parse_time(option: str) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "pytest", option, "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 4 and option.split("=")[0] in done.stderr  # pytest's usage-error exit
