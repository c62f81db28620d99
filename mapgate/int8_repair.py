"""``mapgate int8-repair``: find an INT8 recipe that passes the gate, from calibration images alone.

1. Split the calibration images into *calibrate* and *proxy* sets (:mod:`mapgate.sensitivity`).
2. Free options first: calibration method (MinMax / Percentile / Entropy) x per-channel weights,
   and half vs all of the calibrate set ("more images"), each scored by the proxy.
3. If the proxy still misses its tolerance: rank the convolutions by sensitivity, and give them
   back to float greedily, most sensitive first, keeping a layer only if the proxy improves,
   until the proxy meets the tolerance (or ``max_float_layers``).
4. Verify once on the evaluation set with the real gate (the recipe exactly as the manifest
   will build it: all calibration images), next to the unrepaired INT8, and time FP32,
   unrepaired and repaired INT8 on the proxy images.
5. Write the recipe (``convert.int8_keep_float``, ``int8_calibration``, ``int8_per_channel``)
   with its numbers to a TOML file the user reviews and commits.

The search never reads an evaluated image: its reads are logged (``RepairResult.images_read``)
and checked disjoint from the evaluated set before verification.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapgate.calibration import check_disjoint
from mapgate.errors import BackendUnavailable, ConfigError
from mapgate.manifest import INT8_CALIBRATIONS, ModelSpec
from mapgate.sensitivity import ImageLog, LayerSensitivity, Proxy, ProxyScore, conv_nodes, layer_sensitivity, \
    split_calibration

TARGETS = ("onnxruntime:int8", "tensorrt:int8")
# Proxy tolerance: pseudo-AP points (vs the FP32 model's own detections on the proxy images) the
# repaired model may lose. See README "When INT8 fails" for how it was set on the bundled models.
DEFAULT_PROXY_TOLERANCE = 30.0
DEFAULT_MAX_FLOAT_LAYERS = 12


@dataclass
class RepairConfig:
    target: str = "onnxruntime:int8"
    proxy_tolerance: float = DEFAULT_PROXY_TOLERANCE
    max_float_layers: int = DEFAULT_MAX_FLOAT_LAYERS
    max_candidates: int | None = None  # None: every convolution is scored (CI uses a few)
    methods: tuple[str, ...] = INT8_CALIBRATIONS
    per_channel: tuple[bool, ...] = (True, False)
    proxy_every: int = 3


@dataclass
class Recipe:
    calibration: str
    per_channel: bool
    keep_float: list[str]  # the whole int8_keep_float: the manifest's entries, then the layers the search added
    added: list[str] = field(default_factory=list)  # the convolutions this search gave back to float
    calibration_images: str = "all"  # the recipe calibrates on every calibration image, as the gate does

    def apply(self, model: ModelSpec, target: str) -> ModelSpec:
        """``model`` with this recipe and without an expected-verdict canary for ``target``."""
        convert = dataclasses.replace(model.convert, int8_calibration=self.calibration,
                                      int8_per_channel=self.per_channel, int8_keep_float=tuple(self.keep_float))
        expected = {k: v for k, v in model.expected_verdicts.items() if k != target}
        return dataclasses.replace(model, convert=convert, expected_verdicts=expected)


@dataclass
class RepairResult:
    model: str
    target: str
    recipe: Recipe
    proxy_before: ProxyScore
    proxy_after: ProxyScore
    proxy_tolerance: float
    proxy_met: bool
    options: list[dict[str, Any]]
    sensitivity: list[LayerSensitivity]
    steps: list[dict[str, Any]]
    images_read: set[int]
    n_calibrate: int
    n_proxy: int
    latency_ms: dict[str, float] = field(default_factory=dict)  # proxy images, median per image
    search_seconds: float = 0.0
    verification: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model": self.model, "target": self.target, "recipe": dataclasses.asdict(self.recipe),
            "float_layers": len(self.recipe.added),
            "proxy": {"tolerance_pseudo_ap_points_lost": self.proxy_tolerance, "met": self.proxy_met,
                      "before": self.proxy_before.to_dict(), "after": self.proxy_after.to_dict(),
                      "calibrate_images": self.n_calibrate, "proxy_images": self.n_proxy},
            "free_options": self.options, "greedy_steps": self.steps,
            "sensitivity": [s.to_dict() for s in self.sensitivity],
            "latency_ms_per_image": self.latency_ms,
            "speed": _speed(self.latency_ms),
            "search_seconds": self.search_seconds,
            "images_read": sorted(self.images_read),
            "verification": self.verification,
        }
        return out


def _speed(lat: dict[str, float]) -> dict[str, float]:
    if not {"fp32", "int8", "int8_repaired"} <= set(lat):
        return {}
    return {"repaired_vs_int8": lat["int8_repaired"] / lat["int8"], "repaired_vs_fp32": lat["int8_repaired"] / lat["fp32"],
            "int8_vs_fp32": lat["int8"] / lat["fp32"]}


def _meets(score: ProxyScore, tolerance: float) -> bool:
    return 100.0 - score.pseudo_ap <= tolerance


def search(model: ModelSpec, fp32_onnx: Path, calib_images: Sequence[Path], cfg: RepairConfig,
           work_dir: Path, log: ImageLog | None = None, say: Callable[[str], None] = lambda s: None) -> RepairResult:
    """Steps 1-3 on the calibration images only; returns the recipe and the proxy numbers."""
    from mapgate.convert import ort_quant

    started = time.perf_counter()
    log = log if log is not None else ImageLog()
    calib, proxy_images = split_calibration(calib_images, cfg.proxy_every)
    log.note(calib)
    proxy = Proxy(model, fp32_onnx, proxy_images, log)
    proto = ort_quant.load_for_quantization(fp32_onnx)
    base_keep = list(model.convert.int8_keep_float)
    counter = iter(range(1_000_000))

    def build(keep: Sequence[str], method: str, per_channel: bool, images: Sequence[Path] = calib,
              tag: str = "") -> Path:
        out = work_dir / f"q{next(counter)}.onnx"
        # the ranges depend on the method and the images only, so each pair calibrates once
        cache = work_dir / f"ranges-{method}{tag}.json"
        ort_quant.quantize(fp32_onnx, out, model, images, method=method, per_channel=per_channel, keep_float=keep,
                           calibration_cache=cache, proto=proto)
        return out

    say("scoring the manifest's INT8 recipe on the proxy images")
    c = model.convert
    unrepaired = build(base_keep, c.int8_calibration, c.int8_per_channel)
    before = proxy.score(unrepaired)
    latency = {"fp32": proxy.fp32_latency_ms, "int8": proxy.last_latency_ms}

    options: list[dict[str, Any]] = []
    best: tuple[float, str, bool] | None = None
    for method in cfg.methods:
        for pc in cfg.per_channel:
            say(f"free option: calibration {method}, per-channel {pc}")
            s = before if (method, pc) == (c.int8_calibration, c.int8_per_channel) else \
                proxy.score(build(base_keep, method, pc))
            options.append({"calibration": method, "per_channel": pc, "images": len(calib), **s.to_dict()})
            if best is None or s.pseudo_ap > best[0]:
                best = (s.pseudo_ap, method, pc)
    assert best is not None
    _, method, pc = best
    say(f"free option: calibration {method}, per-channel {pc}, half the calibrate images")
    half = proxy.score(build(base_keep, method, pc, calib[: len(calib) // 2], tag="-half"))
    options.append({"calibration": method, "per_channel": pc, "images": len(calib) // 2, **half.to_dict()})
    for o in options:
        o["won"] = (o["calibration"], o["per_channel"], o["images"]) == (method, pc, len(calib))

    current = next(o for o in options if o["won"])
    current_score = ProxyScore(**{k: current[k] for k in ProxyScore.__dataclass_fields__})
    keep: list[str] = []
    sens: list[LayerSensitivity] = []
    steps: list[dict[str, Any]] = []
    if not _meets(current_score, cfg.proxy_tolerance):
        candidates = conv_nodes(proto, ort_quant.keep_float_nodes(proto, base_keep))
        if cfg.max_candidates is not None:
            candidates = candidates[: cfg.max_candidates]
        sens = layer_sensitivity(lambda k: build(k, method, pc), proxy, candidates, base_keep, say)
        for s in sens:
            if len(keep) >= cfg.max_float_layers or _meets(current_score, cfg.proxy_tolerance):
                break
            say(f"greedy: {s.node} back to float ({len(keep)} so far)")
            trial = proxy.score(build([*base_keep, *keep, s.node], method, pc))
            accepted = trial.pseudo_ap > current_score.pseudo_ap
            steps.append({"node": s.node, "accepted": accepted, **trial.to_dict()})
            if accepted:
                keep.append(s.node)
                current_score = trial
    recipe = Recipe(method, pc, list(dict.fromkeys([*base_keep, *keep])), keep)
    repaired = build(recipe.keep_float, method, pc)
    latency["int8_repaired"] = _latency(proxy, repaired)
    latency["int8"] = _latency(proxy, unrepaired)
    latency["fp32"] = _latency(proxy, fp32_onnx)
    return RepairResult(model.name, cfg.target, recipe, before, current_score, cfg.proxy_tolerance,
                        _meets(current_score, cfg.proxy_tolerance), options, sens, steps, log.image_ids,
                        len(calib), len(proxy_images), latency, time.perf_counter() - started)


def _latency(proxy: Proxy, path: Path, rounds: int = 2) -> float:
    """Median ms per image on the proxy images (best of ``rounds`` passes: a shared CPU is noisy)."""
    best = float("inf")
    for _ in range(rounds):
        proxy.run(path)
        best = min(best, proxy.last_latency_ms)
    return best


def repair(gate: Any, model_name: str, cfg: RepairConfig, verify: bool = True,
           say: Callable[[str], None] = lambda s: None) -> RepairResult:
    """Search (calibration images only), then verify once with ``gate`` (a mapgate.gate.Gate)."""
    from mapgate.backends import get_backend
    from mapgate.convert import onnx_for

    if cfg.target not in TARGETS:
        raise ConfigError(f"int8-repair: --target must be one of {', '.join(TARGETS)}, got {cfg.target!r}")
    backend = cfg.target.split(":")[0]
    available = get_backend(backend).availability()
    if not available.ok:
        # the search itself runs on ONNX Runtime's Q/DQ (the same recipe TensorRT builds), but the
        # verification must run the real engine
        raise BackendUnavailable(backend, f"int8-repair --target {cfg.target} verifies on {backend}: {available.reason}")
    model = gate.model(model_name)
    ctx = gate.build_context()
    check_disjoint(ctx.calib_image_ids, ctx.evaluated_image_ids, f"int8-repair of {model_name}")
    fp32 = onnx_for(model, ctx)
    with tempfile.TemporaryDirectory(prefix="mapgate-int8-repair-") as tmp:
        result = search(model, fp32, ctx.calib_images, cfg, Path(tmp), say=say)
    check_disjoint(result.images_read, ctx.evaluated_image_ids, f"int8-repair search of {model_name}")
    if verify:
        say("verifying once on the evaluation set")
        before = gate.compare(model_name, cfg.target)
        gate.models[model_name] = result.recipe.apply(model, cfg.target)
        gate._sides.pop((model_name, cfg.target), None)
        after = gate.compare(model_name, cfg.target)
        gate.models[model_name] = model
        result.verification = {
            "dataset": after.dataset, "tolerance": after.tolerance,
            "before": {"delta_ap": before.delta_ap, "verdict": before.verdict, "ci": _ci(before.ci)},
            "after": {"delta_ap": after.delta_ap, "verdict": after.verdict, "ci": _ci(after.ci),
                      "opt_AP": 100.0 * after.opt_stats["AP"], "ref_AP": 100.0 * after.ref_stats["AP"]},
            "passed": after.passed,
        }
    return result


def _ci(ci: dict[str, Any] | None) -> list[float] | None:
    return [ci["low_points"], ci["high_points"]] if ci else None


def recipe_toml(result: RepairResult) -> str:
    """The recipe as manifest keys, with its numbers as comments and an [int8_repair] data table."""
    r = result.recipe
    v = result.verification
    name = json.dumps(result.model)
    lines = [f"# mapgate int8-repair --model {result.model} --target {result.target}",
             f"# Found on calibration images only ({result.n_calibrate} calibrate + {result.n_proxy} proxy); "
             "paste the convert.* keys into the model's manifest entry",
             f"# (and drop its expected_verdicts.\"{result.target}\" canary if it passes)."]
    if v:
        lines.append(f"# Verified on {v['dataset']}: dAP {v['before']['delta_ap']:+.2f} -> {v['after']['delta_ap']:+.2f} "
                     f"points ({v['before']['verdict']} -> {v['after']['verdict']}, tolerance {v['tolerance']:g}).")
    sp = _speed(result.latency_ms)
    if sp:
        lines.append(f"# Speed (ONNX Runtime CPU, proxy images): repaired INT8 {result.latency_ms['int8_repaired']:.2f} ms, "
                     f"x{sp['repaired_vs_int8']:.2f} of unrepaired INT8, x{sp['repaired_vs_fp32']:.2f} of FP32.")
    lines += ["", f"[models.{name}.convert]",
              "int8_keep_float = [" + ", ".join(json.dumps(k) for k in r.keep_float) + "]",
              f"int8_calibration = {json.dumps(r.calibration)}",
              f"int8_per_channel = {'true' if r.per_channel else 'false'}", "",
              f"[int8_repair.{name}.{json.dumps(result.target)}]",
              f"float_layers_added = {len(r.added)}",
              f"proxy_pseudo_ap_before = {result.proxy_before.pseudo_ap:.3f}",
              f"proxy_pseudo_ap_after = {result.proxy_after.pseudo_ap:.3f}",
              f"proxy_met = {'true' if result.proxy_met else 'false'}"]
    if v:
        lines += [f"delta_ap_before = {v['before']['delta_ap']:.3f}", f"delta_ap_after = {v['after']['delta_ap']:.3f}",
                  f"passed = {'true' if v['passed'] else 'false'}"]
    for k, val in result.latency_ms.items():
        lines.append(f"latency_ms_{k} = {val:.3f}")
    return "\n".join(lines) + "\n"
