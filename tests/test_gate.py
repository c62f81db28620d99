"""The gate session: artifacts anyone can re-check with pycocotools alone, a detection cache that
hits only when nothing that matters changed and never trusts a damaged entry, stored references
checked before use, disjoint INT8 calibration, the verdict rule, detection agreement and the
committed-baseline check.

Runs YOLOX-nano (reference: onnxruntime) against its vendor TFLite FP16/INT8 files on the first
12 images of val2017-mini, with engines and reports in a temporary folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path
from statistics import NormalDist

import pytest

from mapgate import report
from mapgate.backends.base import BuildContext
from mapgate.baselines import BaselineCheck, BaselineKind
from mapgate.calibration import calibration_images, check_disjoint, image_ids_of
from mapgate.cache import PROVENANCE_SUFFIX
from mapgate.compare import Agreement, Verdict, detection_agreement, outcome
from mapgate.dataset import BUNDLED_ANNOTATIONS, CocoDataset
from mapgate.errors import ConfigError, DataError
from mapgate.evaluate import STAT_NAMES
from mapgate.fsutil import sha256_file
from mapgate.gate import Gate, contract_hash
from mapgate.catalog import load_manifest

# one worker builds the module's compare run once (loadgroup)
pytestmark = pytest.mark.xdist_group("gate-work")

MODEL = "yolox-nano-416"
N_IMAGES = 12
RESAMPLES = 200  # the CI's width is not under test here; 1000 resamples only cost time


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def models(bundled_models):
    return {MODEL: bundled_models[MODEL]}


def new_gate(models: dict, work: Path, run_id: str, max_images: int = N_IMAGES, engines: Path | None = None) -> Gate:
    return Gate(models=models, dataset=CocoDataset(max_images=max_images), engines_dir=engines or work / "engines",
                reports_dir=work / "reports", run_id=run_id, progress=False, bootstrap_resamples=RESAMPLES)


@pytest.fixture(scope="module")
def first(models: dict, work: Path, require_backend) -> dict:
    """The first gate session: both comparisons, computed from scratch."""
    require_backend("onnxruntime")
    require_backend("tflite")
    gate = new_gate(models, work, "run-a")
    fp16 = gate.compare(MODEL, "tflite:fp16")
    int8 = gate.compare(MODEL, "tflite:int8")
    env = gate.write_env()
    return {"gate": gate, "fp16": fp16, "int8": int8, "env": env, "dir": gate.run_dir / MODEL}


def cache_entry(engines: Path, backend: str = "onnxruntime", precision: str = "orig") -> Path:
    found = [p for p in (engines / MODEL).glob(f"detections-{backend}-{precision}-*.json")
             if not p.name.endswith(PROVENANCE_SUFFIX)]
    assert len(found) == 1, found
    return found[0]


def copy_engines(first: dict, dest: Path) -> Path:
    shutil.copytree(first["gate"].engines_dir, dest, ignore=shutil.ignore_patterns("*.lock"))
    return dest


# ============================================================================ artifacts


@pytest.mark.slow
def test_compare_writes_detections_metrics_comparison_and_summary(first: dict) -> None:
    d = first["dir"]
    assert d == first["gate"].reports_dir / "run-a" / MODEL
    for side in ("onnxruntime", "tflite-fp16", "tflite-int8"):
        assert (d / side / "detections.json").is_file(), side
        assert (d / side / "metrics.json").is_file(), side
    for target in ("tflite-fp16", "tflite-int8"):
        assert (d / target / "comparison.json").is_file()
        assert (d / target / "summary.md").is_file()
    assert not (d / "onnxruntime" / "comparison.json").exists()


def test_comparison_json_holds_the_whole_verdict(first: dict) -> None:
    c = json.loads((first["dir"] / "tflite-fp16" / "comparison.json").read_text())
    assert {"model", "ref", "opt", "dataset", "deltas", "ci", "agreement", "tolerance", "tolerance_source",
            "verdict", "reason", "delta_ap", "delta_ap50", "ref_stats", "opt_stats", "per_category",
            "expected", "decision_rule"} <= set(c)
    assert c["decision_rule"]["outcome"] == c["verdict"] and c["decision_rule"]["n_images"] == N_IMAGES
    assert c["model"] == MODEL
    assert c["dataset"] == "val2017-mini subset (first 12 of 206 images)"
    assert c["ref"]["target"] == "onnxruntime" and c["ref"]["precision"] == "original"
    assert c["opt"]["target"] == "tflite:fp16"
    assert c["opt"]["artifact_sha256"] == sha256_file(c["opt"]["artifact"])
    assert set(c["deltas"]) == set(STAT_NAMES)
    assert c["delta_ap"] == c["deltas"]["AP"] == pytest.approx(100 * (c["opt_stats"]["AP"] - c["ref_stats"]["AP"]))
    assert c["tolerance"] == 0.5 and c["tolerance_source"] == "default for fp16"
    assert c["ci"]["n_resamples"] == RESAMPLES and c["ci"]["low_points"] <= c["ci"]["high_points"]
    assert c["verdict"] == "inconclusive" and c["expected"] == "pass"  # 12 images cannot prove a 0.5-point bound
    assert {"matched", "reference_detections", "matched_share", "mean_iou", "worst_images"} <= set(c["agreement"])


def test_fp16_is_within_tolerance_on_too_few_images_and_the_broken_vendor_int8_fails_as_expected(first: dict) -> None:
    fp16, int8 = first["fp16"], first["int8"]
    assert abs(fp16.delta_ap) < 0.5
    assert fp16.verdict == "inconclusive" and fp16.ci["low_points"] < -0.5  # on 12 images the CI is wide
    assert fp16.images_needed > N_IMAGES and f"about {fp16.images_needed} images" in report.reason(fp16)
    assert fp16.agreement.matched_share > 0.9
    assert int8.verdict == "fail" and int8.expected == "fail" and int8.as_expected
    assert int8.delta_ap < -10  # the vendor INT8 file squeezes its boxes
    assert int8.tolerance == 1.5
    assert f"{int8.delta_ap:+.2f}" in report.reason(int8)


def test_summary_md_is_the_verdict_as_a_table_with_the_subset_label(first: dict) -> None:
    text = (first["dir"] / "tflite-int8" / "summary.md").read_text()
    assert text.startswith(f"# {MODEL}: tflite:int8 vs onnxruntime")
    assert "val2017-mini subset (first 12 of 206 images)" in text
    assert "**verdict: fail** (expected: fail)" in text
    for name in STAT_NAMES:
        assert f"| {name} |" in text


def test_metrics_json_records_what_ran_and_on_which_images(first: dict) -> None:
    m = json.loads((first["dir"] / "onnxruntime" / "metrics.json").read_text())
    assert (m["model"], m["backend"], m["precision"]) == (MODEL, "onnxruntime", "original")
    assert m["dataset"]["image_ids"] == CocoDataset(max_images=N_IMAGES).image_ids
    assert m["dataset"]["n_images"] == N_IMAGES
    assert m["contract_hash"] == contract_hash(first["gate"].models[MODEL])
    assert m["identity"]["artifact_sha256"] == sha256_file(m["identity"]["artifact"])
    assert set(m["timings_ms_per_image"]) == {"preprocess", "inference", "postprocess"}
    assert m["detections_from_cache"] is False
    assert {"stats", "voc07_ap50", "voc_area_ap50", "per_category", "mapgate_version"} <= set(m)


def test_env_json_records_versions_and_hardware(first: dict) -> None:
    env = json.loads(first["env"].read_text())
    assert first["env"] == first["gate"].reports_dir / "run-a" / "env.json"
    assert {"mapgate", "python", "platform", "machine", "versions", "device"} <= set(env)
    assert env["versions"]["onnxruntime"] and env["versions"]["numpy"] and env["versions"]["pycocotools"]


@pytest.mark.parametrize("side", ["onnxruntime", "tflite-fp16", "tflite-int8"])
def test_artifacts_recheck_with_pycocotools_alone(first: dict, side: str) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    d = first["dir"] / side
    metrics = json.loads((d / "metrics.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(BUNDLED_ANNOTATIONS))
        dt = gt.loadRes(str(d / "detections.json"))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = metrics["dataset"]["image_ids"]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(ev.stats) == 12
    for i, name in enumerate(STAT_NAMES):
        assert metrics["stats"][name] == pytest.approx(float(ev.stats[i]), abs=1e-12), name


# ============================================================================ the detection cache


def test_a_second_gate_with_the_same_inputs_loads_detections_from_cache(first: dict, models: dict,
                                                                        work: Path) -> None:
    again = new_gate(models, work, "run-b")
    ref, opt = again.side(MODEL), again.side(MODEL, "tflite:fp16")
    assert ref.from_cache and opt.from_cache
    before = first["gate"].side(MODEL)
    assert not before.from_cache
    assert ref.detections == before.detections
    assert ref.metrics.stats == before.metrics.stats
    assert opt.metrics.stats == first["gate"].side(MODEL, "tflite:fp16").metrics.stats
    m = json.loads((again.run_dir / MODEL / "onnxruntime" / "metrics.json").read_text())
    assert m["detections_from_cache"] is True
    assert m["timings_ms_per_image"] == before.timings_ms  # the original run's timings travel with the cache


def test_an_unchanged_manifest_copy_hits_the_cache(first: dict, work: Path, tmp_path: Path,
                                                   manifest_copy) -> None:
    """Control for the next test: a copy with absolute paths is the same model to the cache."""
    models = load_manifest(manifest_copy(tmp_path / "copy.toml", MODEL))
    assert contract_hash(models[MODEL]) == contract_hash(first["gate"].models[MODEL])
    assert new_gate(models, work, "run-c").side(MODEL).from_cache


def test_a_changed_score_threshold_misses_the_cache(first: dict, work: Path, tmp_path: Path,
                                                    manifest_copy) -> None:
    path = manifest_copy(tmp_path / "changed.toml", MODEL, {"score_threshold = 0.01": "score_threshold = 0.04"})
    models = load_manifest(path)
    assert models[MODEL].postprocess.score_threshold == 0.04
    side = new_gate(models, work, "run-d", engines=copy_engines(first, tmp_path / "engines")).side(MODEL)
    assert not side.from_cache
    assert min(d["score"] for d in side.detections) > 0.04
    assert len(side.detections) < len(first["gate"].side(MODEL).detections)


def test_a_different_image_set_misses_the_cache(first: dict, models: dict, work: Path, tmp_path: Path) -> None:
    side = new_gate(models, work, "run-e", max_images=10, engines=copy_engines(first, tmp_path / "engines")).side(MODEL)
    assert not side.from_cache
    assert side.metrics.dataset.n_images == 10


def test_a_truncated_cache_entry_is_discarded_and_recomputed(first: dict, models: dict, work: Path,
                                                             tmp_path: Path) -> None:
    engines = copy_engines(first, tmp_path / "engines")
    entry = cache_entry(engines)
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])
    side = new_gate(models, work, "run-f", engines=engines).side(MODEL)
    assert not side.from_cache
    assert side.metrics.stats == first["gate"].side(MODEL).metrics.stats
    assert json.loads(cache_entry(engines).read_text()) == side.detections  # the entry was rewritten whole


def test_a_damaged_entry_with_a_matching_provenance_is_still_not_trusted(first: dict, models: dict, work: Path,
                                                                         tmp_path: Path) -> None:
    """An entry that is valid JSON but not a detection list (provenance forged to match) is recomputed."""
    engines = copy_engines(first, tmp_path / "engines")
    entry = cache_entry(engines)
    entry.write_text('{"not": "a list"}')
    prov_path = entry.with_name(entry.stem + PROVENANCE_SUFFIX)
    prov = json.loads(prov_path.read_text())
    prov["file"].update(size=entry.stat().st_size, sha256=sha256_file(entry))
    prov_path.write_text(json.dumps(prov))
    side = new_gate(models, work, "run-g", engines=engines).side(MODEL)
    assert not side.from_cache
    assert side.metrics.stats == first["gate"].side(MODEL).metrics.stats


def test_without_the_cache_detections_are_recomputed_and_nothing_is_cached(first: dict, models: dict, work: Path,
                                                                           tmp_path: Path) -> None:
    gate = new_gate(models, work, "run-h", engines=tmp_path / "engines")
    gate.use_cache = False
    side = gate.side(MODEL)
    assert not side.from_cache
    assert side.detections == first["gate"].side(MODEL).detections
    assert not list((tmp_path / "engines").glob(f"{MODEL}/detections-*"))


# ============================================================================ stored references


def stored_reference(first: dict) -> Path:
    return first["dir"] / "onnxruntime" / "detections.json"


def test_a_stored_reference_with_the_same_images_and_contract_is_accepted(first: dict, models: dict,
                                                                          work: Path) -> None:
    gate = new_gate(models, work, "run-i")
    verdict = gate.compare(MODEL, "tflite:fp16", ref=stored_reference(first))
    assert verdict.ref["target"] == "stored:onnxruntime"
    assert verdict.ref["sha256"] == sha256_file(stored_reference(first))
    assert verdict.deltas == first["fp16"].deltas
    assert verdict.verdict == first["fp16"].verdict
    side = gate.stored_side(MODEL, stored_reference(first).parent)  # a folder works too
    assert side.metrics.stats == first["gate"].side(MODEL).metrics.stats


def test_a_stored_reference_of_another_image_set_is_refused_naming_the_file(first: dict, models: dict,
                                                                            work: Path) -> None:
    gate = new_gate(models, work, "run-j", max_images=10)
    with pytest.raises(ConfigError) as exc:
        gate.stored_side(MODEL, stored_reference(first))
    msg = str(exc.value)
    assert str(stored_reference(first).with_name("metrics.json")) in msg
    assert "image set (12 images)" in msg and "first 10 of 206" in msg


def test_a_stored_reference_of_another_contract_is_refused_naming_the_file(first: dict, work: Path, tmp_path: Path,
                                                                           manifest_copy) -> None:
    path = manifest_copy(tmp_path / "nms.toml", MODEL, {"nms_iou = 0.65": "nms_iou = 0.5"})
    gate = new_gate(load_manifest(path), work, "run-k")
    with pytest.raises(ConfigError) as exc:
        gate.compare(MODEL, "tflite:fp16", ref=str(stored_reference(first)))
    msg = str(exc.value)
    assert str(stored_reference(first).with_name("metrics.json")) in msg
    assert "contract hash" in msg


def test_a_stored_reference_without_its_metrics_json_is_an_error_naming_it(first: dict, models: dict, work: Path,
                                                                           tmp_path: Path) -> None:
    lone = tmp_path / "detections.json"
    shutil.copy(stored_reference(first), lone)
    with pytest.raises(DataError, match=str(lone)):
        new_gate(models, work, "run-l").stored_side(MODEL, lone)


# ============================================================================ INT8 calibration


def test_calibration_images_are_disjoint_from_the_evaluated_set() -> None:
    calib = image_ids_of(calibration_images())
    assert len(calib) >= 100 and 785 in calib
    assert not set(calib) & set(CocoDataset().image_ids)
    check_disjoint(calib, CocoDataset().image_ids, "bundled sets")  # does not raise


def test_overlapping_calibration_is_refused_naming_the_overlap() -> None:
    with pytest.raises(ConfigError) as exc:
        check_disjoint([785, 4765, 9378], [139, 785, 9378], "INT8 calibration of m for x:int8")
    msg = str(exc.value)
    assert msg.startswith("INT8 calibration of m for x:int8: 2 calibration image(s)")
    assert "image ids 785, 9378" in msg


def test_ort_int8_build_refuses_calibration_images_that_are_evaluated(bundled_models, tmp_path: Path) -> None:
    from mapgate.convert import ort_quant

    ctx = BuildContext(engines_dir=tmp_path / "engines", evaluated_image_ids=frozenset({139, 785}))
    with pytest.raises(ConfigError) as exc:
        ort_quant.build(bundled_models[MODEL], ctx, "onnxruntime:int8")
    assert "785" in str(exc.value) and MODEL in str(exc.value)
    assert not (tmp_path / "engines").exists() or not list((tmp_path / "engines").rglob("*.onnx"))


# ============================================================================ the verdict rule


def verdict(d_ap: float, tolerance: float = 0.5, ci: dict | None = None, low: float = -0.3, high: float = 0.2,
            ref_detections: int | None = 100) -> Verdict:
    stats = {k: 0.3 for k in STAT_NAMES}
    deltas = {k: 0.0 for k in STAT_NAMES}
    deltas.update(AP=d_ap, AP50=-0.6)
    default_ci = {"low_points": d_ap + low, "high_points": d_ap + high, "n_resamples": 10, "seed": 0,
                  "n_images": 200, "confidence": 0.95, "se_points": (high - low) / 3.92}
    return Verdict(model="m", ref={"target": "onnxruntime"}, opt={"target": "tflite:fp16"}, dataset="d (200 images)",
                   ref_stats=stats, opt_stats=stats, deltas=deltas, per_category={},
                   ci=default_ci if ci is None else ci, agreement=Agreement(0.3, 0.9, 0, 0, 1.0, None),
                   tolerance=tolerance, tolerance_source="default for fp16", ref_detections=ref_detections)


def test_the_verdict_passes_only_when_the_whole_ci_is_above_minus_tolerance() -> None:
    assert verdict(0.0).verdict == "pass"  # CI [-0.30, +0.20] against -0.5
    assert verdict(+2.0).verdict == "pass"
    v = verdict(-0.1, low=-0.39)
    assert v.verdict == "pass" and v.passed and v.images_needed is None
    assert "dAP -0.10 points" in report.reason(v) and "[-0.49, +0.10]" in report.reason(v) and "-0.5" in report.reason(v)


def test_the_verdict_fails_when_the_point_estimate_is_below_minus_tolerance_and_says_by_how_much() -> None:
    v = verdict(-0.51)
    assert v.verdict == "fail" and not v.passed and not v.as_expected
    assert "dAP -0.51 points" in report.reason(v)
    assert "tolerance of 0.5 points" in report.reason(v) and "default for fp16" in report.reason(v)
    assert "dAP50 -0.60" in report.reason(v)
    assert verdict(-0.01, tolerance=0.0).verdict == "fail"


def test_a_ci_reaching_below_minus_tolerance_is_inconclusive_with_the_images_needed() -> None:
    """SSDLite INT8 on val2017-mini: dAP -1.11, CI [-2.34, -0.09], tolerance 1.5."""
    se = (2.34 - 0.09) / 3.92
    v = verdict(-1.11, tolerance=1.5, ci={"low_points": -2.34, "high_points": -0.09, "n_resamples": 1000,
                                          "seed": 0, "n_images": 206, "confidence": 0.95, "se_points": se})
    assert v.verdict == "inconclusive" and not v.passed
    # n' = n * (z * se / (dAP + tol))^2 = 206 * (1.96 * 0.574 / 0.39)^2
    assert v.images_needed == math.ceil(206 * (NormalDist().inv_cdf(0.975) * se / (1.5 - 1.11)) ** 2)
    assert 1600 < v.images_needed < 1800
    assert f"about {v.images_needed} images (this run: 206)" in report.reason(v) and "cannot tell" in report.reason(v)
    rule = v.to_dict()["decision_rule"]
    assert rule["outcome"] == "inconclusive" and rule["ci_low"] == -2.34 and rule["tolerance"] == 1.5
    assert rule["rule"].startswith("non-inferiority") and "images_needed_formula" in rule


def test_an_estimate_sitting_on_the_tolerance_needs_no_finite_number_of_images() -> None:
    v = verdict(-0.5, tolerance=0.5)
    assert v.verdict == "inconclusive" and v.images_needed is None and "no number of images" in report.reason(v)


def test_a_reference_without_detections_is_never_a_pass() -> None:
    v = verdict(0.0, ref_detections=0)
    assert v.verdict == "fail" and "reference produced no detections" in report.reason(v)


def test_a_verdict_without_a_ci_cannot_pass() -> None:
    v = verdict(-0.1, ci={})
    assert v.verdict == "inconclusive" and "no CI" in report.reason(v)


@pytest.mark.parametrize(("got", "expected", "policy", "result"), [
    ("pass", "pass", None, "pass"), ("fail", "pass", None, "fail"),
    ("inconclusive", "pass", "fail", "fail"), ("inconclusive", "pass", "pass", "pass"),
    ("fail", "fail", None, "pass"), ("pass", "fail", None, "fail"), ("inconclusive", "fail", "pass", "fail"),
    ("inconclusive", "inconclusive", "fail", "pass"), ("pass", "inconclusive", "fail", "pass"),
    ("fail", "inconclusive", None, "fail"),
])
def test_what_a_verdict_means_for_the_run(got: str, expected: str, policy: str | None, result: str) -> None:
    v = {"pass": verdict(0.0), "fail": verdict(-1.0), "inconclusive": verdict(-0.4)}[got]
    assert v.verdict == got
    v.expected = expected
    assert outcome(v, policy) == result


def test_an_inconclusive_verdict_fails_under_ci_and_only_warns_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    v = verdict(-0.4)
    monkeypatch.setenv("CI", "true")
    assert outcome(v) == "fail"
    monkeypatch.delenv("CI")
    assert outcome(v) == "warn"


def test_verdict_to_dict_is_json_serialisable_with_the_delta_shortcuts() -> None:
    d = json.loads(json.dumps(verdict(-0.1).to_dict()))
    assert d["delta_ap"] == -0.1 and d["delta_ap50"] == -0.6 and d["verdict"] == "pass"
    assert d["extras"] == {} and d["decision_rule"]["outcome"] == "pass"


# ============================================================================ detection agreement


def det(image_id: int, bbox: list[float], score: float = 0.9, category_id: int = 1) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_identical_detections_agree_completely() -> None:
    ref = [det(1, [10, 10, 100, 50]), det(1, [200, 10, 30, 30], 0.5, 3), det(2, [0, 0, 10, 10], 0.8)]
    a = detection_agreement(ref, [dict(d) for d in ref])
    assert (a.reference_detections, a.matched, a.matched_share, a.mean_iou) == (3, 3, 1.0, 1.0)


def test_a_box_shifted_below_iou_09_is_not_matched() -> None:
    ref = [det(1, [0, 0, 100, 100])]  # [x, y, w, h]
    near = detection_agreement(ref, [det(1, [5, 0, 100, 100])])  # IoU 9500 / 10500 = 0.905
    assert near.matched == 1 and near.mean_iou == pytest.approx(9500 / 10500)
    shifted = detection_agreement(ref, [det(1, [6, 0, 100, 100])])  # IoU 9400 / 10600 = 0.887
    assert shifted.matched == 0 and shifted.matched_share == 0.0 and shifted.mean_iou is None


def test_a_class_mismatch_is_not_matched() -> None:
    a = detection_agreement([det(1, [0, 0, 100, 100], category_id=1)], [det(1, [0, 0, 100, 100], category_id=2)])
    assert a.matched == 0


def test_matching_is_one_to_one_and_ignores_low_reference_scores() -> None:
    ref = [det(1, [0, 0, 100, 100], 0.9), det(1, [0, 0, 100, 100], 0.8), det(1, [500, 500, 10, 10], 0.29)]
    a = detection_agreement(ref, [det(1, [0, 0, 100, 100], 0.01)])  # any opt score counts
    assert a.reference_detections == 2  # the 0.29 one is below min_score 0.3
    assert a.matched == 1 and a.matched_share == 0.5


def test_worst_images_come_first() -> None:
    ref = [det(1, [0, 0, 10, 10]), det(2, [0, 0, 10, 10]), det(2, [50, 50, 10, 10]), det(3, [0, 0, 10, 10]),
           det(3, [50, 50, 10, 10]), det(3, [90, 90, 10, 10])]
    opt = [det(1, [0, 0, 10, 10]), det(2, [0, 0, 10, 10])]
    a = detection_agreement(ref, opt)
    assert [w["image_id"] for w in a.worst_images] == [3, 2, 1]
    assert a.worst_images[0] == {"image_id": 3, "matched": 0, "reference": 3, "share": 0.0}
    assert detection_agreement(ref, opt, worst=2).worst_images[-1]["image_id"] == 2


def test_nothing_to_match_is_full_agreement() -> None:
    a = detection_agreement([det(1, [0, 0, 10, 10], 0.1)], [])
    assert a.reference_detections == 0 and a.matched_share == 1.0


# ============================================================================ committed baselines


BASELINES = {"m": {"tflite:int8": {"AP": 0.30, "AP50": 0.50}}}


def test_a_result_within_tolerance_of_its_baseline_passes() -> None:
    status = BaselineCheck("m", "tflite:int8", 0.2951, 0.4951, 0.5).compare(BASELINES)
    assert status.kind is BaselineKind.WITHIN and "within 0.5 points" in report.baseline_text(status)


def test_a_result_below_its_baseline_by_more_than_tolerance_regresses() -> None:
    status = BaselineCheck("m", "tflite:int8", 0.28, 0.50, 1.5).compare(BASELINES)
    msg = report.baseline_text(status)
    assert status.regressed and status.stat == "AP" and status.drop == pytest.approx(2.0)
    assert "AP 28.00 is 2.00 points below its baseline 30.00" in msg and "--update-baselines" in msg


def test_an_ap50_regression_alone_also_regresses() -> None:
    status = BaselineCheck("m", "tflite:int8", 0.31, 0.47, 1.5).compare(BASELINES)
    assert status.regressed and "AP50 47.00 is 3.00 points below" in report.baseline_text(status)


def test_a_result_above_its_baseline_passes() -> None:
    assert BaselineCheck("m", "tflite:int8", 0.35, 0.55, 0.0).compare(BASELINES).kind is BaselineKind.WITHIN


def test_no_baseline_recorded_is_reported_not_failed() -> None:
    status = BaselineCheck("m", "tensorrt:fp16", 0.1, 0.2, 0.5).compare(BASELINES)
    assert status.kind is BaselineKind.MISSING and "no baseline recorded" in report.baseline_text(status)


def test_a_baseline_of_another_data_set_is_not_compared() -> None:
    status = BaselineCheck("m", "tflite:int8", 0.1, 0.2, 0.5, "b").compare(
        {"m": {"tflite:int8": {"AP": 0.3, "AP50": 0.5, "dataset": "a"}}})
    assert status.kind is BaselineKind.OTHER_DATASET and "not compared" in report.baseline_text(status)


def test_the_committed_baselines_hold_for_the_yolox_reference(first: dict) -> None:
    """On 12 images the numbers differ from the 206-image baseline: the check is for the bundled set only."""
    baselines = json.loads((Path(__file__).resolve().parent.parent / "fixtures" / "mapgate-baselines.json").read_text())
    assert {"onnxruntime", "tflite:fp16", "tflite:int8"} <= set(baselines[MODEL])  # and openvino:*
    assert baselines[MODEL]["tflite:int8"]["AP"] < baselines[MODEL]["onnxruntime"]["AP"] - 0.2


def test_a_failing_comparison_says_where_the_points_went(first: dict) -> None:
    """comparison.json's `attribution`: TIDE error types per side and their difference; summary.md shows it."""
    from mapgate.attribution import ERROR_TYPES

    c = json.loads((first["dir"] / "tflite-int8" / "comparison.json").read_text())
    a = c["attribution"]
    assert set(a["difference_dAP50_points"]) == set(ERROR_TYPES)
    assert a["delta_AP50_points"] == pytest.approx(c["deltas"]["AP50"], abs=1e-9)
    assert a["where_points_went"][0]["points"] > 5.0  # the squeezed boxes lose points somewhere specific
    assert set(a["by_size"]) == {"small", "medium", "large"} and a["worst_classes"]
    assert "Where the points went" in (first["dir"] / "tflite-int8" / "summary.md").read_text()
