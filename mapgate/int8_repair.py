"""``mapgate int8-repair``: the fastest INT8 recipe that passes the gate, from calibration images alone.

1. Split the calibration images into *calibrate* and *proxy* sets (:mod:`mapgate.sensitivity`).
2. Every candidate recipe is built, scored by the proxy and timed beside FP32 (engine only,
   batch 1, interleaved; ONNX Runtime CPU, which is a CPU proxy of TensorRT's speed when the
   target is ``tensorrt:int8``). The options that cost no speed come first:
   a. calibration method (MinMax / Percentile / Entropy) x per-channel weights, and half vs all of
      the calibrate set ("more images");
   a'. the Q/DQ form (``convert.int8_ops`` x ``int8_activation_type``) on the best of (a), for an
      ONNX Runtime target only: TensorRT takes convolutions with S8 activations alone (TENSORRT_FORM);
   b. the data-free fixes (``convert.int8_cle``, ``convert.int8_bias_correction``:
      :mod:`mapgate.convert.dfq`) on the best of (a).
3. Only if no candidate meets the proxy tolerance while running at least ``min_speedup`` x FP32
   do layers go back to float: each convolution alone in float is scored and timed, and they are
   tried by head-output error removed per millisecond they cost, keeping a layer only if the
   proxy improves and the recipe still pays, until the proxy meets the tolerance.
4. The chosen recipe is the fastest candidate that meets the proxy and pays (candidates within
   ``SPEED_TIE`` of the fastest count as equally fast: the best proxy of them wins). When none
   does, the search says "no INT8 recipe both passes and pays here" with its best points.
5. Verify once on the evaluation set with the real gate (the recipe exactly as the manifest will
   build it: all calibration images), next to the unrepaired INT8.
6. Write the recipe (``convert.int8_*``) with its numbers to a TOML file the user reviews and
   commits; the JSON record holds every candidate (the Pareto plot's points).

The search never reads an evaluated image: its reads are logged (``RepairResult.images_read``)
and checked disjoint from the evaluated set before verification.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapgate.cache import ArtifactCache
from mapgate.calibration import check_disjoint
from mapgate.errors import BackendUnavailable, ConfigError
from mapgate.fsutil import mark_complete, mark_incomplete
from mapgate.manifest import INT8_ACTIVATION_TYPES, INT8_CALIBRATIONS, INT8_OPS, ModelSpec
from mapgate.sensitivity import ImageLog, LayerSensitivity, Proxy, ProxyScore, Speed, conv_nodes, gain_per_ms, \
    layer_sensitivity, rank_per_ms, split_calibration
from mapgate.convert import ort_quant
from mapgate.backends import get_backend
from mapgate.convert import onnx_for

TARGETS = ("onnxruntime:int8", "tensorrt:int8")
# Proxy tolerance: pseudo-AP points (vs the FP32 model's own detections on the proxy images) the
# repaired model may lose. See README "When INT8 fails" for how it was set on the bundled models.
DEFAULT_PROXY_TOLERANCE = 30.0
DEFAULT_MAX_FLOAT_LAYERS = 12
DEFAULT_MIN_SPEEDUP = 1.0  # FP32 time / INT8 time: INT8 must at least not be slower
# Two candidates whose times differ by less than this share are equally fast: the timing noise of
# a few interleaved images on a shared CPU is about that large.
SPEED_TIE = 0.05
NO_RECIPE = "no INT8 recipe both passes and pays here"
LATENCY_ENGINE = "onnxruntime CPU (engine only, batch 1, 1 thread, interleaved with FP32)"


@dataclass
class RepairConfig:
    target: str = "onnxruntime:int8"
    proxy_tolerance: float = DEFAULT_PROXY_TOLERANCE
    max_float_layers: int = DEFAULT_MAX_FLOAT_LAYERS
    max_candidates: int | None = None  # None: every convolution is scored (CI uses a few)
    methods: tuple[str, ...] = INT8_CALIBRATIONS
    per_channel: tuple[bool, ...] = (True, False)
    data_free: bool = True  # try convert.int8_cle / int8_bias_correction before float layers
    # Q/DQ forms (ops, activation type) to try; None: every form for onnxruntime:int8, the TensorRT form alone
    # for tensorrt:int8 (its parser and fusions take Q/DQ on convolutions with S8 activations)
    forms: tuple[tuple[str, str], ...] | None = None
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    proxy_every: int = 3


@dataclass
class Recipe:
    calibration: str
    per_channel: bool
    keep_float: list[str]  # the whole int8_keep_float: the manifest's entries, then the layers the search added
    added: list[str] = field(default_factory=list)  # the convolutions this search gave back to float
    calibration_images: str = "all"  # the recipe calibrates on every calibration image, as the gate does
    cle: bool = False
    bias_correction: bool = False
    ops: str = "conv"  # convert.int8_ops
    activation_type: str = "s8"  # convert.int8_activation_type

    def apply(self, model: ModelSpec, target: str) -> ModelSpec:
        """``model`` with this recipe and without an expected-verdict canary for ``target``."""
        convert = dataclasses.replace(model.convert, int8_calibration=self.calibration,
                                      int8_per_channel=self.per_channel, int8_keep_float=tuple(self.keep_float),
                                      int8_cle=self.cle, int8_bias_correction=self.bias_correction,
                                      int8_ops=self.ops, int8_activation_type=self.activation_type)
        expected = {k: v for k, v in model.expected_verdicts.items() if k != target}
        return dataclasses.replace(model, convert=convert, expected_verdicts=expected)


@dataclass
class Candidate:
    """One recipe the search built: its proxy score and its speed beside FP32."""

    stage: str  # "manifest", "calibration", "data-free", "float layers"
    recipe: Recipe
    score: ProxyScore
    speed: Speed
    images: int  # calibrate images its ranges came from
    choosable: bool = True  # False: a probe (half the calibrate images) the manifest cannot express

    def meets(self, tolerance: float) -> bool:
        return 100.0 - self.score.pseudo_ap <= tolerance

    def to_dict(self) -> dict[str, Any]:
        r = self.recipe
        return {"stage": self.stage, "calibration": r.calibration, "per_channel": r.per_channel, "cle": r.cle,
                "ops": r.ops, "activation_type": r.activation_type,
                "bias_correction": r.bias_correction, "float_layers": len(r.added), "images": self.images,
                "choosable": self.choosable, **self.score.to_dict(), "speed": self.speed.to_dict()}


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
    latency_ms: dict[str, float] = field(default_factory=dict)  # engine-only median ms per image (proxy images)
    search_seconds: float = 0.0
    verification: dict[str, Any] | None = None
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int = -1  # index into candidates
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    pays: bool = False  # the chosen recipe runs at least min_speedup x FP32

    @property
    def status(self) -> str:
        """"found" when the chosen recipe meets the proxy and pays, else NO_RECIPE."""
        return "found" if self.proxy_met and self.pays else NO_RECIPE

    @property
    def latency_is_cpu_proxy(self) -> bool:
        return not self.target.startswith("onnxruntime:")

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model": self.model, "target": self.target, "recipe": dataclasses.asdict(self.recipe),
            "status": self.status, "min_speedup": self.min_speedup,
            "float_layers": len(self.recipe.added),
            "proxy": {"tolerance_pseudo_ap_points_lost": self.proxy_tolerance, "met": self.proxy_met,
                      "before": self.proxy_before.to_dict(), "after": self.proxy_after.to_dict(),
                      "calibrate_images": self.n_calibrate, "proxy_images": self.n_proxy},
            "free_options": self.options, "greedy_steps": self.steps,
            "sensitivity": [s.to_dict() for s in self.sensitivity],
            "candidates": [c.to_dict() for c in self.candidates], "chosen": self.chosen,
            "latency": {"engine": LATENCY_ENGINE, "cpu_proxy": self.latency_is_cpu_proxy,
                        "note": (f"{self.target} cannot be timed here: ONNX Runtime CPU on the same Q/DQ file "
                                 "stands in for it") if self.latency_is_cpu_proxy else ""},
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
            "int8_vs_fp32": lat["int8"] / lat["fp32"], "speedup_vs_fp32": lat["fp32"] / lat["int8_repaired"]}


def _meets(score: ProxyScore, tolerance: float) -> bool:
    return 100.0 - score.pseudo_ap <= tolerance


def choose(candidates: Sequence[Candidate], tolerance: float, min_speedup: float) -> tuple[int, bool]:
    """(index of the chosen candidate, whether it meets the proxy and pays). The fastest candidate
    that meets the proxy tolerance at ``min_speedup`` or more (within SPEED_TIE of the fastest: the
    best proxy); else the best proxy among those that pay; else the best proxy of all."""
    pool = [i for i, c in enumerate(candidates) if c.choosable]
    if not pool:
        raise ValueError("no candidates to choose from")
    good = [i for i in pool if candidates[i].meets(tolerance) and candidates[i].speed.speedup >= min_speedup]
    if good:
        fastest = max(candidates[i].speed.speedup for i in good)
        tied = [i for i in good if candidates[i].speed.speedup >= fastest * (1.0 - SPEED_TIE)]
        return max(tied, key=lambda i: candidates[i].score.pseudo_ap), True
    paying = [i for i in pool if candidates[i].speed.speedup >= min_speedup] or pool
    return max(paying, key=lambda i: (candidates[i].score.pseudo_ap, candidates[i].speed.speedup)), False


def _base(candidates: Sequence[Candidate], min_speedup: float) -> Candidate:
    """Where the next stage starts: the best proxy among the choosable candidates that pay (or all)."""
    pool = [c for c in candidates if c.choosable]
    paying = [c for c in pool if c.speed.speedup >= min_speedup] or pool
    return max(paying, key=lambda c: (c.score.pseudo_ap, c.speed.speedup))


def search(model: ModelSpec, fp32_onnx: Path, calib_images: Sequence[Path], cfg: RepairConfig,
           work_dir: Path, log: ImageLog | None = None, say: Callable[[str], None] = lambda s: None) -> RepairResult:
    """Steps 1-4 on the calibration images only; returns the recipe, every candidate and the proxy numbers."""

    started = time.perf_counter()
    log = log if log is not None else ImageLog()
    calib, proxy_images = split_calibration(calib_images, cfg.proxy_every)
    log.note(calib)
    proxy = Proxy(model, fp32_onnx, proxy_images, log)
    proto = ort_quant.load_for_quantization(fp32_onnx)
    base_keep = list(model.convert.int8_keep_float)
    counter = iter(range(1_000_000))
    candidates: list[Candidate] = []

    def build(r: Recipe, images: Sequence[Path] = calib, tag: str = "") -> Path:
        out = work_dir / f"q{next(counter)}.onnx"
        # the ranges depend on the method, the images, CLE (it rescales activations) and the Q/DQ form
        # (which tensors are calibrated, symmetric or not) only, so each such combination calibrates once
        cache = work_dir / f"ranges-{r.calibration}{'-cle' if r.cle else ''}-{r.ops}-{r.activation_type}{tag}.json"
        ort_quant.quantize(fp32_onnx, out, model, images, method=r.calibration, per_channel=r.per_channel,
                           keep_float=r.keep_float, calibration_cache=cache, proto=proto, cle=r.cle,
                           bias_correction=r.bias_correction, ops=r.ops, activation_type=r.activation_type)
        return out

    def evaluate(stage: str, r: Recipe, images: Sequence[Path] = calib, tag: str = "",
                 choosable: bool = True) -> Candidate:
        path = build(r, images, tag)
        c = Candidate(stage, r, proxy.score(path), proxy.speed(path), len(images), choosable)
        candidates.append(c)
        say(f"{stage}: {_describe(r)}: proxy {c.score.pseudo_ap:.1f}, x{c.speed.speedup:.2f} FP32 speed")
        return c

    c = model.convert
    say("scoring the manifest's INT8 recipe on the proxy images")
    manifest = evaluate("manifest", Recipe(c.int8_calibration, c.int8_per_channel, list(base_keep), [],
                                           cle=c.int8_cle, bias_correction=c.int8_bias_correction,
                                           ops=c.int8_ops, activation_type=c.int8_activation_type))
    before = manifest.score
    plain_ms = manifest.speed

    options: list[dict[str, Any]] = []
    for method in cfg.methods:
        for pc in cfg.per_channel:
            if (method, pc) == (c.int8_calibration, c.int8_per_channel):
                cand = manifest
            else:
                cand = evaluate("calibration", dataclasses.replace(manifest.recipe, calibration=method,
                                                                   per_channel=pc))
            options.append({"calibration": method, "per_channel": pc, "images": len(calib), **cand.score.to_dict(),
                            "speedup_vs_fp32": cand.speed.speedup})
    best = _base(candidates, cfg.min_speedup)
    half = evaluate("calibration", dataclasses.replace(best.recipe), calib[: len(calib) // 2], tag="-half",
                    choosable=False)
    options.append({"calibration": best.recipe.calibration, "per_channel": best.recipe.per_channel,
                    "images": len(calib) // 2, **half.score.to_dict(), "speedup_vs_fp32": half.speed.speedup})
    for o in options:
        o["won"] = (o["calibration"], o["per_channel"], o["images"]) == (best.recipe.calibration,
                                                                          best.recipe.per_channel, len(calib))

    # the Q/DQ form changes the speed more than anything else on a CPU engine, and costs no float layer
    seen_forms = {(x.recipe.ops, x.recipe.activation_type) for x in candidates if x.recipe == best.recipe}
    for ops, act in forms_for(cfg, model):
        if (ops, act) not in seen_forms:
            evaluate("form", dataclasses.replace(best.recipe, ops=ops, activation_type=act))
    best = _base(candidates, cfg.min_speedup)

    if cfg.data_free:
        tried = {(x.recipe.calibration, x.recipe.per_channel, x.recipe.cle, x.recipe.bias_correction)
                 for x in candidates if (x.recipe.ops, x.recipe.activation_type) == (best.recipe.ops,
                                                                                       best.recipe.activation_type)}
        for cle, bc in ((True, False), (False, True), (True, True)):
            r = dataclasses.replace(best.recipe, cle=cle, bias_correction=bc)
            if (r.calibration, r.per_channel, cle, bc) not in tried:
                evaluate("data-free", r)

    sens: list[LayerSensitivity] = []
    steps: list[dict[str, Any]] = []
    _, found = choose(candidates, cfg.proxy_tolerance, cfg.min_speedup)
    start = _base(candidates, cfg.min_speedup)
    if not found and start.speed.speedup >= cfg.min_speedup:
        say(f"no free option meets the proxy at x{cfg.min_speedup:g} FP32 speed: layers back to float, "
            "by sensitivity per millisecond")
        layers = conv_nodes(proto, ort_quant.keep_float_nodes(proto, start.recipe.keep_float))
        if cfg.max_candidates is not None:
            layers = layers[: cfg.max_candidates]
        sens = layer_sensitivity(lambda k: build(dataclasses.replace(start.recipe, keep_float=list(k))), proxy,
                                 layers, start.recipe.keep_float, say, timed=True)
        ranked = rank_per_ms(sens, start.score, start.speed)
        current = start
        for s in ranked:
            if len(current.recipe.added) >= cfg.max_float_layers or current.meets(cfg.proxy_tolerance) \
                    or len(steps) >= 3 * cfg.max_float_layers:
                break
            per_ms, cost = gain_per_ms(s, start.score, start.speed)
            say(f"float layers: {s.node} back to float ({len(current.recipe.added)} so far)")
            r = dataclasses.replace(current.recipe, keep_float=[*current.recipe.keep_float, s.node],
                                    added=[*current.recipe.added, s.node])
            trial = evaluate("float layers", r)
            pays = trial.speed.speedup >= cfg.min_speedup
            accepted = pays and trial.score.pseudo_ap > current.score.pseudo_ap
            steps.append({"node": s.node, "accepted": accepted, "pays": pays, "error_removed_per_ms": per_ms,
                          "cost_ms": cost, **trial.score.to_dict(), "speedup_vs_fp32": trial.speed.speedup})
            if accepted:
                current = trial
            else:
                trial.choosable = False  # the recipe without this layer is the one that goes on
    chosen_i, found = choose(candidates, cfg.proxy_tolerance, cfg.min_speedup)
    chosen = candidates[chosen_i]
    if not found:
        say(f"{NO_RECIPE} (min speedup x{cfg.min_speedup:g}); best points in the record")
    recipe = dataclasses.replace(chosen.recipe, keep_float=list(dict.fromkeys(chosen.recipe.keep_float)))
    latency = {"fp32": chosen.speed.fp32_ms, "int8": plain_ms.ms * chosen.speed.fp32_ms / plain_ms.fp32_ms,
               "int8_repaired": chosen.speed.ms}
    return RepairResult(model.name, cfg.target, recipe, before, chosen.score, cfg.proxy_tolerance,
                        chosen.meets(cfg.proxy_tolerance), options, sens, steps, log.image_ids,
                        len(calib), len(proxy_images), latency, time.perf_counter() - started,
                        candidates=candidates, chosen=chosen_i, min_speedup=cfg.min_speedup,
                        pays=chosen.speed.speedup >= cfg.min_speedup)


def forms_for(cfg: RepairConfig, model: ModelSpec) -> tuple[tuple[str, str], ...]:
    """The Q/DQ forms the search tries (see RepairConfig.forms). The recipe's convert.* keys are the
    model's for every backend, so a model that gates tensorrt:int8 keeps TensorRT's form whatever the
    target (the manifest refuses another); a form it cannot hold is an error, not a silent skip."""
    trt = (ort_quant.TENSORRT_FORM["ops"], ort_quant.TENSORRT_FORM["activation_type"])
    trt_bound = cfg.target == "tensorrt:int8" or "tensorrt:int8" in model.optimized
    if cfg.forms is None:
        return (trt,) if trt_bound else tuple((ops, act) for ops in INT8_OPS for act in INT8_ACTIVATION_TYPES)
    if trt_bound and any(f != trt for f in cfg.forms):
        why = ("tensorrt:int8 builds from convolution Q/DQ with S8 activations only" if cfg.target == "tensorrt:int8"
               else f"model {model.name!r} gates tensorrt:int8, whose Q/DQ form is {'/'.join(trt)} only")
        raise ConfigError(f"int8-repair --forms: {why}; drop the other forms or the tensorrt:int8 target")
    return cfg.forms


def _describe(r: Recipe) -> str:
    parts = [r.calibration, "per-channel" if r.per_channel else "per-tensor", f"{r.ops}/{r.activation_type}"]
    parts += [name for name, on in (("CLE", r.cle), ("bias correction", r.bias_correction)) if on]
    if r.added:
        parts.append(f"{len(r.added)} float layers")
    return ", ".join(parts)


def repair(gate: Any, model_name: str, cfg: RepairConfig, verify: bool = True,
           say: Callable[[str], None] = lambda s: None) -> RepairResult:
    """Search (calibration images only), then verify once with ``gate`` (a mapgate.gate.Gate)."""

    if cfg.target not in TARGETS:
        raise ConfigError(f"int8-repair: --target must be one of {', '.join(TARGETS)}, got {cfg.target!r}")
    backend = cfg.target.split(":")[0]
    available = get_backend(backend).availability()
    if verify and not available.ok:
        # the search itself runs on ONNX Runtime's Q/DQ (the same recipe TensorRT builds), but the
        # verification must run the real engine (--no-verify searches with CPU proxy timings)
        raise BackendUnavailable(backend, f"int8-repair --target {cfg.target} verifies on {backend}: {available.reason} "
                                          "(--no-verify searches without it, timing on the CPU as a proxy)")
    model = gate.model(model_name)
    forms_for(cfg, model)  # a form the manifest could not hold is refused before anything is built
    ctx = gate.build_context()
    check_disjoint(ctx.calib_image_ids, ctx.evaluated_image_ids, f"int8-repair of {model_name}")
    fp32 = onnx_for(model, ctx)
    # under the engines dir the user chose (ORT's ort.quant.* folders too), swept if the run is killed
    with ArtifactCache(ctx.engines_dir).tempdir() as tmp:
        result = search(model, fp32, ctx.calib_images, cfg, tmp, say=say)
    check_disjoint(result.images_read, ctx.evaluated_image_ids, f"int8-repair search of {model_name}")
    if verify and result.status != NO_RECIPE:
        say("verifying once on the evaluation set")
        mark_incomplete(gate.run_dir, "mapgate int8-repair's verification")  # until both comparisons are written
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
        mark_complete(gate.run_dir)
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
        where = f"CPU proxy for {result.target}" if result.latency_is_cpu_proxy else "ONNX Runtime CPU"
        lines.append(f"# Speed ({where}, engine only, batch 1, beside FP32 on the proxy images): this recipe "
                     f"{result.latency_ms['int8_repaired']:.2f} ms, x{sp['speedup_vs_fp32']:.2f} FP32 speed "
                     f"(the manifest's INT8: x{1.0 / sp['int8_vs_fp32']:.2f}).")
    if result.status == NO_RECIPE:
        lines.append(f"# {NO_RECIPE} (--min-speedup {result.min_speedup:g}, proxy tolerance {result.proxy_tolerance:g}): "
                     "this is the best point found, not a passing recipe.")
    lines += ["", f"[models.{name}.convert]",
              "int8_keep_float = [" + ", ".join(json.dumps(k) for k in r.keep_float) + "]",
              f"int8_calibration = {json.dumps(r.calibration)}",
              f"int8_per_channel = {_toml_bool(r.per_channel)}",
              f"int8_cle = {_toml_bool(r.cle)}",
              f"int8_bias_correction = {_toml_bool(r.bias_correction)}",
              f"int8_ops = {json.dumps(r.ops)}",
              f"int8_activation_type = {json.dumps(r.activation_type)}", "",
              f"[int8_repair.{name}.{json.dumps(result.target)}]",
              f"status = {json.dumps(result.status)}",
              f"min_speedup = {result.min_speedup:g}",
              f"float_layers_added = {len(r.added)}",
              f"proxy_pseudo_ap_before = {result.proxy_before.pseudo_ap:.3f}",
              f"proxy_pseudo_ap_after = {result.proxy_after.pseudo_ap:.3f}",
              f"proxy_met = {_toml_bool(result.proxy_met)}",
              f"latency_is_cpu_proxy = {_toml_bool(result.latency_is_cpu_proxy)}"]
    if sp:
        lines.append(f"speedup_vs_fp32 = {sp['speedup_vs_fp32']:.3f}")
    if v:
        lines += [f"delta_ap_before = {v['before']['delta_ap']:.3f}", f"delta_ap_after = {v['after']['delta_ap']:.3f}",
                  f"passed = {'true' if v['passed'] else 'false'}"]
    for k, val in result.latency_ms.items():
        lines.append(f"latency_ms_{k} = {val:.3f}")
    return "\n".join(lines) + "\n"


def _toml_bool(value: bool) -> str:
    return "true" if value else "false"
