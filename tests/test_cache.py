"""The one artifact cache (mapgate/cache.py): keys, layout, verification, locks, atomic publishing,
clean-up of killed runs, storage errors; the TensorRT engine and calibration-table rules on top
of it; and the image-set key by content (issue 11, items 9 and 10, and the cache sweep).

TensorRT itself is replaced by a fake builder (bytes in, bytes out); everything else is real:
real files, real processes holding locks, real fixture images, a real tmpfs when this machine
lets us mount one.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from engine_helpers import CALIB, make_spec
from mapgate import cache as cache_mod
from mapgate import fsutil
from mapgate.backends.tensorrt import BuildJob, CorruptEngine, EngineCache, EngineSpec
from mapgate.cache import PROVENANCE_SUFFIX, ArtifactCache, CorruptArtifact, cache_key, sweep, without_paths
from mapgate.dataset import BUNDLED_ANNOTATIONS, BUNDLED_ROOT, CocoDataset
from mapgate.errors import ConversionError, DataError, MapgateError, StorageError
from mapgate.fsutil import HOST_TAG, file_lock, write_bytes_atomic

ROOT = Path(__file__).resolve().parents[1]


def _fresh_sweep(root: Path) -> int:
    cache_mod._swept.discard(os.path.abspath(root))
    return sweep(root)


def build_writing(payload: bytes = b"ARTIFACT" * 64, extra: dict | None = None, calls: list | None = None):
    def build(tmp: Path) -> dict:
        if calls is not None:
            calls.append(tmp)
        tmp.write_bytes(payload)
        return dict(extra or {})
    return build


# ============================================================================ key and layout
def test_one_key_function_is_stable_order_free_and_kind_specific() -> None:
    assert cache_key("k", {"a": 1, "b": [1, 2]}) == cache_key("k", {"b": [1, 2], "a": 1})
    assert cache_key("k", {"a": 1}) != cache_key("other", {"a": 1})
    assert cache_key("k", {"a": 1}) != cache_key("k", {"a": 2})


def test_paths_are_refused_in_keys_and_dropped_from_identities(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="never locations"):
        cache_key("k", {"onnx": tmp_path / "m.onnx"})
    real = tmp_path / "m.onnx"
    real.write_bytes(b"x")
    ident = {"artifact": str(real), "artifact_sha256": "ab", "nested": {"onnx": str(real), "n": 1},
             "node_prefix": "/model.22/dfl"}  # an ONNX node name is not a file: kept
    assert without_paths(ident) == {"artifact_sha256": "ab", "nested": {"n": 1}, "node_prefix": "/model.22/dfl"}


def test_layout_is_kind_key_suffix_with_a_provenance_file_beside_it(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    slot = cache.slot("yolo", "ort-int8", {"onnx_sha256": "0" * 64}, ".onnx")
    entry = cache.get_or_build(slot, build_writing())
    assert entry.built and entry.path == tmp_path / "yolo" / f"ort-int8-{slot.key[:16]}.onnx"
    assert sorted(p.name for p in (tmp_path / "yolo").iterdir()) == sorted(
        [entry.path.name, f"ort-int8-{slot.key[:16]}{PROVENANCE_SUFFIX}", f".ort-int8-{slot.key[:16]}.lock"])
    prov = json.loads(slot.provenance_path.read_text())
    assert prov["file"] == {"name": entry.path.name, "size": 512, "sha256": hashlib.sha256(b"ARTIFACT" * 64).hexdigest()}
    assert (prov["kind"], prov["model"], prov["key"], prov["key_fields"]) == ("ort-int8", "yolo", slot.key,
                                                                             {"onnx_sha256": "0" * 64})
    again = cache.get_or_build(slot, build_writing(calls=(calls := [])))
    assert not again.built and again.reason == "cache hit" and calls == []


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "..", "a/b", "nul\0byte"])
def test_hostile_model_names_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    from mapgate.errors import ConfigError

    root = tmp_path / "engines"
    cache = ArtifactCache(root)
    with pytest.raises(ConfigError, match="model name"):
        cache.get_or_build(cache.slot(name, "k", {}, ".bin"), build_writing())
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_copied_engines_dir_still_hits(tmp_path: Path) -> None:
    a = ArtifactCache(tmp_path / "a")
    a.get_or_build(a.slot("m", "k", {"x": 1}, ".bin"), build_writing())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = ArtifactCache(tmp_path / "b")
    assert not b.get_or_build(b.slot("m", "k", {"x": 1}, ".bin"), build_writing()).built


# ============================================================================ verification
DAMAGE = {
    "size as string": lambda p: p["file"].update(size=str(p["file"]["size"])),
    "size as bool": lambda p: p["file"].update(size=True),
    "sha256 as number": lambda p: p["file"].update(sha256=123),
    "file as list": lambda p: p.update(file=[p["file"]]),
    "key_fields as list": lambda p: p.update(key_fields=[1]),
    "schema as string": lambda p: p.update(schema="2"),
    "build_seconds as string": lambda p: p.update(build_seconds="fast"),
    "no key": lambda p: p.pop("key"),
    "not an object": lambda p: (p.clear(), p.update(__list__=True)),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_provenance_with_a_valid_hash_but_wrong_field_types_is_rebuilt_not_a_crash(tmp_path: Path,
                                                                                   damage: str) -> None:
    cache = ArtifactCache(tmp_path)
    slot = cache.slot("m", "k", {"x": 1}, ".bin")
    cache.get_or_build(slot, build_writing())
    prov = json.loads(slot.provenance_path.read_text())
    DAMAGE[damage](prov)
    slot.provenance_path.write_text(json.dumps([1] if prov.get("__list__") else prov))
    ok, reason = cache.check(slot)
    assert not ok and "provenance" in reason and "damaged" in reason, reason
    entry = cache.get_or_build(slot, build_writing(b"NEW" * 10))
    assert entry.built and "damaged" in entry.reason and slot.path.read_bytes() == b"NEW" * 10
    assert cache.check(slot) == (True, "cache hit")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete provenance", "garbage provenance", "stale key"])
def test_damaged_or_stale_entries_are_rebuilt(tmp_path: Path, damage: str) -> None:
    cache = ArtifactCache(tmp_path)
    slot = cache.slot("m", "k", {"x": 1}, ".bin")
    cache.get_or_build(slot, build_writing())
    data = bytearray(slot.path.read_bytes())
    if damage == "truncate":
        slot.path.write_bytes(data[:10])
    elif damage == "flip":
        data[3] ^= 0xFF
        slot.path.write_bytes(bytes(data))
    elif damage == "delete provenance":
        slot.provenance_path.unlink()
    elif damage == "garbage provenance":
        slot.provenance_path.write_bytes(b"\xff{")
    else:
        prov = json.loads(slot.provenance_path.read_text())
        prov["key_fields"] = {"x": 2}
        slot.provenance_path.write_text(json.dumps(prov))
    expected = {"truncate": "truncated", "flip": "sha256 differs", "delete provenance": "no provenance",
                "garbage provenance": "not valid JSON", "stale key": "stale provenance"}[damage]
    entry = cache.get_or_build(slot, build_writing(b"NEW" * 10))
    assert entry.built and expected in entry.reason, entry.reason


def test_an_artifact_that_does_not_load_is_rebuilt_and_a_fresh_one_that_does_not_is_never_cached(
        tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    slot = cache.slot("m", "detections", {"x": 1}, ".json")

    def load(data: bytes, prov: dict) -> list:
        value = json.loads(data)
        if not isinstance(value, list):
            raise CorruptArtifact("not a list")
        return value

    cache.get_or_build(slot, build_writing(b'{"not": "a list"}'))  # written without a loader
    entry = cache.get_or_build(slot, build_writing(b"[1, 2]"), load)
    assert entry.built and "does not load (not a list)" in entry.reason and entry.value == [1, 2]
    slot2 = cache.slot("m", "detections", {"x": 2}, ".json")
    with pytest.raises(ConversionError, match="does not load"):
        cache.get_or_build(slot2, build_writing(b"{}"), load)
    assert not slot2.path.exists() and not slot2.provenance_path.exists()
    assert not list(slot2.dir.glob(".*.part"))


def test_an_empty_build_is_an_error_and_publishes_nothing(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    slot = cache.slot("m", "k", {}, ".bin")
    with pytest.raises(ConversionError, match="produced no bytes"):
        cache.get_or_build(slot, build_writing(b""))
    assert not slot.path.exists()


# ============================================================================ permissions and links
@pytest.mark.parametrize("umask,mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_cache_files_get_exactly_the_users_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        cache = ArtifactCache(tmp_path)
        slot = cache.slot("m", "k", {}, ".bin")
        cache.get_or_build(slot, build_writing())
    finally:
        os.umask(old)
    for p in (slot.path, slot.provenance_path, slot.lock_path):
        assert p.stat().st_mode & 0o777 == mode, p


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_lock_file_replaced_by_a_link_never_touches_the_target(tmp_path: Path, link: str) -> None:
    cache = ArtifactCache(tmp_path / "engines")
    slot = cache.slot("m", "k", {}, ".bin")
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate me\n")
    slot.dir.mkdir(parents=True)
    (os.symlink if link == "symlink" else os.link)(target, slot.lock_path)
    with pytest.raises(StorageError) as err:
        cache.get_or_build(slot, build_writing())
    assert str(slot.lock_path) in str(err.value)
    assert target.read_text() == "do not truncate me\n"
    assert not slot.path.exists()


# ============================================================================ locks
def _hold_lock(path: str, ready: Any, release: Any) -> None:
    with file_lock(Path(path)):
        ready.set()
        release.wait(30)


def test_a_hung_lock_holder_is_named_and_the_wait_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cache = ArtifactCache(tmp_path)
    slot = cache.slot("m", "k", {}, ".bin")
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(slot.lock_path), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        monkeypatch.setenv(fsutil.LOCK_TIMEOUT_ENV, "0.5")
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mapgate.fsutil"), pytest.raises(StorageError) as err:
            cache.get_or_build(slot, build_writing())
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(10)
    message = str(err.value)
    assert f"held by pid {holder.pid} host " in message and " since 20" in message
    assert "MAPGATE_LOCK_TIMEOUT" in message and str(slot.lock_path) in message
    assert 0.4 < waited < 5
    assert any(f"pid {holder.pid}" in r.getMessage() and "waiting for lock" in r.getMessage() for r in caplog.records)
    assert cache.get_or_build(slot, build_writing()).built  # holder gone: the lock is free


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_a_bad_lock_timeout_setting_is_a_config_error(raw: str) -> None:
    with pytest.raises(MapgateError, match="MAPGATE_LOCK_TIMEOUT"):
        fsutil.lock_timeout_s({"MAPGATE_LOCK_TIMEOUT": raw})


# ============================================================================ storage errors
def test_an_engines_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "engines"
    blocker.write_text("")
    cache = ArtifactCache(blocker)
    with pytest.raises(StorageError, match=str(blocker)):
        cache.get_or_build(cache.slot("m", "k", {}, ".bin"), build_writing())


def test_a_missing_engines_dir_is_created(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "a" / "b" / "engines")
    assert cache.get_or_build(cache.slot("m", "k", {}, ".bin"), build_writing()).path.is_file()


@pytest.mark.parametrize("call,err", [("write", errno.ENOSPC), ("replace", errno.ENOSPC), ("open", errno.EROFS),
                                      ("open", errno.EACCES)])
def test_full_disk_or_read_only_is_a_storage_error_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    call: str, err: int) -> None:
    cache = ArtifactCache(tmp_path)
    slot = cache.slot("m", "bootstrap", {}, ".json")
    real = getattr(os, call)

    def failing(*args: Any, **kw: Any) -> Any:
        target = os.fspath(args[0]) if call == "open" else ""
        if call != "open" or slot.dir.as_posix() in target:
            raise OSError(err, os.strerror(err))
        return real(*args, **kw)

    monkeypatch.setattr(fsutil.os, call, failing)
    with pytest.raises(StorageError) as e:
        cache.get_or_build(slot, lambda tmp: fsutil.write_bytes_atomic(tmp, b"x" * 100))
    monkeypatch.undo()
    assert str(slot.dir) in str(e.value) and os.strerror(err) in str(e.value)
    assert not list(slot.dir.glob("*.part")) and not slot.path.exists()


def _tmpfs(mountpoint: Path, options: str) -> bool:
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("options,expect", [("size=64k", "No space left on device"), ("ro,size=64k", "Read-only")])
def test_a_real_full_or_read_only_file_system(tmp_path: Path, options: str, expect: str) -> None:
    mnt = tmp_path / "small"
    if not _tmpfs(mnt, options):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the monkeypatched test covers it")
    try:
        cache = ArtifactCache(mnt)
        slot = cache.slot("m", "k", {}, ".bin")
        with pytest.raises(StorageError, match=expect) as err:
            cache.get_or_build(slot, build_writing(b"x" * (1 << 20)))
        assert str(mnt) in str(err.value)
        assert not [p for p in mnt.rglob("*") if p.name.endswith(".part")]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ============================================================================ leftovers of killed runs
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_runs_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    root = tmp_path / "engines"
    (root / "m").mkdir(parents=True)
    (root / ".tmp").mkdir()
    dead, me = _dead_pid(), os.getpid()
    dead_part = root / "m" / f".ort-int8-abc.onnx.{HOST_TAG}-{dead}-0badc0de.part"
    live_part = root / "m" / f".ort-int8-abc.onnx.{HOST_TAG}-{me}-00c0ffee.part"
    foreign = root / "m" / f".x.bin.ffffffff-{dead}-00000000.part"  # another host's writer: kept for a day
    old_foreign = root / "m" / f".y.bin.ffffffff-{dead}-00000001.part"
    dead_tmp = root / ".tmp" / f"tmp.{HOST_TAG}-{dead}-12345678"
    (dead_tmp / "ort.quant.abc").mkdir(parents=True)
    (dead_tmp / "ort.quant.abc" / "augmented_model.onnx").write_bytes(b"x")
    user_file = root / "m" / "notes.part"  # not ours (no leading dot): never touched
    for p in (dead_part, live_part, foreign, old_foreign, user_file):
        p.write_bytes(b"x")
    dead_run = root / f".run.{HOST_TAG}-{dead}-0badf00d.part"  # a run folder killed before its rename
    (dead_run / ".incomplete").parent.mkdir()
    (dead_run / ".incomplete").write_bytes(b"x")
    day_ago = time.time() - 2 * 86400
    os.utime(old_foreign, (day_ago, day_ago))
    assert _fresh_sweep(root) == 4
    assert not dead_part.exists() and not dead_tmp.exists() and not old_foreign.exists() and not dead_run.exists()
    assert live_part.exists() and foreign.exists() and user_file.exists()


def test_build_temp_folders_live_under_the_engines_dir_and_are_removed(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    with cache.tempdir() as private:
        made = Path(tempfile.mkdtemp(prefix="ort.quant."))  # what onnxruntime.quantization does
        assert made.parent == private and private.parent == tmp_path / ".tmp"
    assert not private.exists() and tempfile.gettempdir() != str(private)


# ============================================================================ image-set key by content
def _copy_dataset(dest: Path, n: int) -> CocoDataset:
    """The first ``n`` images of val2017-mini and their annotations, as a COCO layout under ``dest``."""
    gt = json.loads(BUNDLED_ANNOTATIONS.read_text())
    images = sorted(gt["images"], key=lambda i: i["id"])[:n]
    ids = {i["id"] for i in images}
    (dest / "val2017").mkdir(parents=True)
    (dest / "annotations").mkdir()
    for img in images:
        shutil.copy2(BUNDLED_ROOT / "val2017" / img["file_name"], dest / "val2017" / img["file_name"])
    sub = {**gt, "images": images, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    (dest / "annotations" / "instances_val2017.json").write_text(json.dumps(sub))
    return CocoDataset.from_root(dest)


def rewrite_quant_table(path: Path) -> None:
    """Change the JPEG's first quantization table in place: same name, same size, other pixels."""
    data = bytearray(path.read_bytes())
    dqt = data.index(b"\xff\xdb")
    for i in range(dqt + 5, dqt + 5 + 64):  # the 64 table entries after marker, length and Pq/Tq
        data[i] = min(255, data[i] * 2 + 1)
    size, mtime = len(data), path.stat().st_mtime_ns
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size and path.stat().st_mtime_ns != mtime


def test_image_set_key_covers_image_bytes_and_not_their_location(tmp_path: Path) -> None:
    ds = _copy_dataset(tmp_path / "coco", 8)
    before = ds.fingerprint
    assert CocoDataset.from_root(tmp_path / "coco").fingerprint == before
    shutil.copytree(tmp_path / "coco", tmp_path / "moved")
    assert CocoDataset.from_root(tmp_path / "moved").fingerprint == before  # a copied data set still hits
    for image_id in ds.image_ids[:3]:
        rewrite_quant_table(ds.path_of(image_id))
    assert CocoDataset.from_root(tmp_path / "coco").fingerprint != before
    assert ds.fingerprint != before  # the same object notices too (no stale memo)


def test_a_missing_image_in_the_key_is_a_data_error_naming_it(tmp_path: Path) -> None:
    ds = _copy_dataset(tmp_path / "coco", 3)
    gone = ds.path_of(ds.image_ids[1])
    gone.unlink()
    with pytest.raises(DataError, match=str(gone)):
        ds.fingerprint


def test_cached_detections_miss_when_three_images_change_in_place(tmp_path: Path, bundled_models: dict,
                                                                  require_backend) -> None:
    """Issue 11 item 9: the same names and sizes, other bytes: the old detections must not come back."""
    require_backend("opencv")
    from mapgate.gate import Gate

    model = "yolo-fastest-1.1-320"
    ds = _copy_dataset(tmp_path / "coco", 6)

    def side(run_id: str, dataset: CocoDataset) -> Any:
        gate = Gate(models={model: bundled_models[model]}, dataset=dataset, engines_dir=tmp_path / "engines",
                    reports_dir=tmp_path / "reports", run_id=run_id, progress=False)
        return gate.side(model)

    first = side("a", ds)
    assert side("b", CocoDataset.from_root(tmp_path / "coco")).from_cache
    for image_id in ds.image_ids[:3]:
        rewrite_quant_table(ds.path_of(image_id))
    changed = side("c", CocoDataset.from_root(tmp_path / "coco"))
    assert not first.from_cache and not changed.from_cache
    changed_ids = set(ds.image_ids[:3])
    old = sorted((d["image_id"], d["score"]) for d in first.detections if d["image_id"] in changed_ids)
    new = sorted((d["image_id"], d["score"]) for d in changed.detections if d["image_id"] in changed_ids)
    assert old != new
    same = [d for d in first.detections if d["image_id"] not in changed_ids]
    assert same == [d for d in changed.detections if d["image_id"] not in changed_ids]


def _gate(bundled_models: dict, model: str, dataset: CocoDataset, engines: Path, reports: Path, run_id: str) -> Any:
    from mapgate.gate import Gate

    return Gate(models={model: bundled_models[model]}, dataset=dataset, engines_dir=engines, reports_dir=reports,
                run_id=run_id, progress=False, bootstrap_resamples=100)


@pytest.mark.slow
def test_a_copied_engines_dir_and_data_set_hit_for_conversions_detections_and_bootstrap(
        tmp_path: Path, bundled_models: dict, require_backend) -> None:
    """No absolute path in any key: the converted ONNX, both detection sets and the bootstrap all come
    back from a copied engines dir evaluated on a copied data set."""
    require_backend("opencv")
    require_backend("onnxruntime")
    model = "yolo-fastest-1.1-320"
    _copy_dataset(tmp_path / "coco", 5)
    first = _gate(bundled_models, model, CocoDataset.from_root(tmp_path / "coco"), tmp_path / "engines",
                  tmp_path / "reports", "a")
    verdict = first.compare(model, "onnxruntime:fp32")
    shutil.copytree(tmp_path / "engines", tmp_path / "engines-copy")
    shutil.copytree(tmp_path / "coco", tmp_path / "coco-copy")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "engines-copy" / model).iterdir()}
    again = _gate(bundled_models, model, CocoDataset.from_root(tmp_path / "coco-copy"), tmp_path / "engines-copy",
                  tmp_path / "reports", "b")
    assert again.compare(model, "onnxruntime:fp32").ci == verdict.ci
    assert again.side(model).from_cache and again.side(model, "onnxruntime:fp32").from_cache
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "engines-copy" / model).iterdir()}
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == \
        {k: v for k, v in before.items() if not k.endswith(".lock")}, "nothing may be rebuilt"


@pytest.mark.parametrize("damage", [{"timings_ms": "fast"}, {"timings_ms": {"infer": "1.0"}}, {"timings_ms": None}])
def test_a_detections_entry_whose_provenance_extras_have_wrong_types_is_recomputed(
        tmp_path: Path, bundled_models: dict, require_backend, damage: dict) -> None:
    require_backend("opencv")
    model = "yolo-fastest-1.1-320"
    _copy_dataset(tmp_path / "coco", 3)
    first = _gate(bundled_models, model, CocoDataset.from_root(tmp_path / "coco"), tmp_path / "engines",
                  tmp_path / "reports", "a").side(model)
    (prov_path,) = (tmp_path / "engines" / model).glob(f"detections-*{PROVENANCE_SUFFIX}")
    prov_path.write_text(json.dumps({**json.loads(prov_path.read_text()), **damage}))
    again = _gate(bundled_models, model, CocoDataset.from_root(tmp_path / "coco"), tmp_path / "engines",
                  tmp_path / "reports", "b").side(model)
    assert not again.from_cache and again.detections == first.detections
    assert isinstance(json.loads(prov_path.read_text())["timings_ms"], dict)  # the entry was rebuilt whole


def test_the_cli_names_an_engines_dir_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    require_backend) -> None:
    require_backend("opencv")
    from mapgate.cli import main

    blocker = tmp_path / "engines"
    blocker.write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_:  # a usage error: argparse names the option and exits 2
        main(["eval", "--model", "yolo-fastest-1.1-320", "--backend", "opencv", "--max-images", "2",
              "--engines-dir", str(blocker), "--out", str(tmp_path / "out"), "--no-progress"])
    code, err = exit_.value.code, capsys.readouterr().err
    assert code == 2 and str(blocker) in err and "Traceback" not in err


# ============================================================================ TensorRT engines on the cache
class FakeBuilder:
    """Stands in for the TensorRT build: returns bytes, optionally writes a calibration table."""

    def __init__(self, payload: bytes = b"ENGINE-BYTES" * 100, calib: bytes | None = b"TRT-8601-EntropyCalibration2\n"):
        self.payload, self.calib = payload, calib
        self.jobs: list[BuildJob] = []
        self.seen_calibration: list[bytes] = []

    def __call__(self, job: BuildJob) -> bytes:
        self.jobs.append(job)
        if job.calibration_cache is not None:
            existing = job.calibration_cache.read_bytes() if job.calibration_cache.exists() else b""
            self.seen_calibration.append(existing)
            if not job.calibration_reused and self.calib is not None:
                job.calibration_cache.write_bytes(self.calib)
        return self.payload


def identity(data: bytes) -> bytes:
    return data




# ---------------------------------------------------------------------------------------------
# Lookup, provenance, rebuild rules
# ---------------------------------------------------------------------------------------------
def test_build_then_reuse_without_calling_the_builder(tmp_path: Path) -> None:
    cache, spec, builder = EngineCache(tmp_path), make_spec(), FakeBuilder()
    first = cache.get_or_build(spec, builder, identity)
    assert first.built and first.reason == "no cached tensorrt-fp16"
    assert first.engine_path == tmp_path / "yolov3-tiny-416" / f"tensorrt-fp16-{spec.key()[:16]}.engine"
    second = cache.get_or_build(spec, builder, identity)
    assert not second.built and second.reason == "cache hit"
    assert len(builder.jobs) == 1
    assert second.value == builder.payload
    assert second.provenance["built_at"] == first.provenance["built_at"]
    assert cache.check(spec) == (True, "cache hit")


def test_provenance_contents(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    spec = make_spec(precision="int8", calibration=CALIB)
    result = cache.get_or_build(spec, FakeBuilder(), identity)
    prov = json.loads(cache.provenance_path(spec).read_text())
    assert prov == result.provenance
    assert prov["model"] == "yolov3-tiny-416"
    assert prov["onnx"] == {"path": "/models/y.onnx", "sha256": "0" * 64}
    assert prov["precision"] == "int8" and prov["input_shape"] == [1, 3, 416, 416]
    assert (prov["tensorrt_version"], prov["gpu"], prov["compute_capability"]) == ("10.3.0", "Orin", "8.7")
    assert prov["workspace_mb"] == 1024
    assert prov["calibration"]["set_sha256"] == "a" * 64 and prov["calibration"]["count"] == 100
    assert prov["calibration"]["algorithm"] == "IInt8EntropyCalibrator2"
    assert prov["calibration"]["cache_file"] == cache.calibration_path(spec).name
    assert prov["built_at"] and prov["build_seconds"] >= 0
    from mapgate import __version__
    assert prov["mapgate_version"] == __version__
    engine_bytes = cache.engine_path(spec).read_bytes()
    import hashlib
    assert prov["file"] == {"name": cache.engine_path(spec).name, "sha256": hashlib.sha256(engine_bytes).hexdigest(),
                            "size": len(engine_bytes)}
    assert prov["key"] == spec.key() and prov["key_fields"] == json.loads(json.dumps(spec.key_fields()))
    assert "fp16" in prov["recipe"]["flags"]  # INT8 builds keep FP16 as the fallback


def _rebuilds(cache: EngineCache, spec: EngineSpec, match: str) -> None:
    builder = FakeBuilder(payload=b"NEW-ENGINE" * 50)
    result = cache.get_or_build(spec, builder, identity)
    assert result.built, "expected a rebuild"
    assert match in result.reason, result.reason
    assert len(builder.jobs) == 1
    assert cache.engine_path(spec).read_bytes() == builder.payload
    assert cache.check(spec)[0]


def test_stale_provenance_rebuilds(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()
    cache.get_or_build(spec, FakeBuilder(), identity)
    prov_path = cache.provenance_path(spec)
    prov = json.loads(prov_path.read_text())
    prov["key_fields"]["tensorrt_version"] = "8.5.2"
    prov_path.write_text(json.dumps(prov))
    assert not cache.check(spec)[0]
    _rebuilds(cache, spec, "stale provenance")


def test_missing_provenance_rebuilds(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()
    cache.get_or_build(spec, FakeBuilder(), identity)
    cache.provenance_path(spec).unlink()
    _rebuilds(cache, spec, "has no provenance file")


def test_corrupt_provenance_json_rebuilds(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()
    cache.get_or_build(spec, FakeBuilder(), identity)
    cache.provenance_path(spec).write_text('{"key": "trunc')
    _rebuilds(cache, spec, "not valid JSON")


def test_truncated_engine_is_detected_and_rebuilt(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()
    cache.get_or_build(spec, FakeBuilder(), identity)
    engine = cache.engine_path(spec)
    engine.write_bytes(engine.read_bytes()[:100])
    ok, reason = cache.check(spec)
    assert not ok and "truncated" in reason
    _rebuilds(cache, spec, "truncated")


def test_same_size_corruption_is_detected_by_sha256(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()
    cache.get_or_build(spec, FakeBuilder(), identity)
    engine = cache.engine_path(spec)
    data = bytearray(engine.read_bytes())
    data[10] ^= 0xFF
    engine.write_bytes(bytes(data))
    _rebuilds(cache, spec, "sha256 differs")


def test_engine_that_fails_to_deserialize_is_deleted_and_rebuilt(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()
    cache.get_or_build(spec, FakeBuilder(payload=b"OLD" * 10), identity)

    def load(data: bytes) -> bytes:
        if data.startswith(b"OLD"):
            raise CorruptEngine("Serialization assertion failed (magic tag)")
        return data

    builder = FakeBuilder(payload=b"GOOD" * 10)
    result = cache.get_or_build(spec, builder, load)
    assert result.built and "does not load (Serialization assertion failed" in result.reason
    assert result.value == b"GOOD" * 10 and len(builder.jobs) == 1


def test_fresh_engine_that_does_not_deserialize_is_not_cached(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()

    def load(data: bytes) -> bytes:
        raise CorruptEngine("version tag mismatch")

    with pytest.raises(ConversionError, match="just built .* does not load .*differ in version"):
        cache.get_or_build(spec, FakeBuilder(), load)
    assert not cache.engine_path(spec).exists() and not cache.provenance_path(spec).exists()


def test_empty_build_output_is_refused(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()
    with pytest.raises(ConversionError, match="produced no bytes"):
        cache.get_or_build(spec, FakeBuilder(payload=b""), identity)
    assert not cache.engine_path(spec).exists()


def test_failed_build_publishes_nothing_and_releases_the_lock(tmp_path: Path) -> None:
    cache, spec = EngineCache(tmp_path, lock_timeout_s=2), make_spec()

    def boom(job: BuildJob) -> bytes:
        raise ConversionError("parser failed")

    with pytest.raises(ConversionError, match="parser failed"):
        cache.get_or_build(spec, boom, identity)
    assert not cache.engine_path(spec).exists()
    assert cache.get_or_build(spec, FakeBuilder(), identity).built  # lock was released


# ---------------------------------------------------------------------------------------------
# INT8 calibration cache
# ---------------------------------------------------------------------------------------------
def test_calibration_cache_is_published_then_reused_by_another_engine(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    spec_a = make_spec(precision="int8", calibration=CALIB)
    first = FakeBuilder()
    result_a = cache.get_or_build(spec_a, first, identity)
    assert first.jobs[0].calibration_reused is False and first.seen_calibration == [b""]
    calib = cache.calibration_path(spec_a)
    assert calib.read_bytes() == first.calib
    calib_prov = json.loads(cache.calibration_provenance_path(spec_a).read_text())
    assert calib_prov["key"] == spec_a.calibration_key() and calib_prov["calibration_count"] == 100
    assert result_a.provenance["calibration"]["cache_reused"] is False

    # A second INT8 engine differing only in a precision-only field shares the table.
    spec_b = make_spec(precision="int8", calibration=CALIB, workspace_mb=256)
    second = FakeBuilder(calib=b"SHOULD-NOT-BE-WRITTEN")
    result_b = cache.get_or_build(spec_b, second, identity)
    assert second.jobs[0].calibration_reused is True
    assert second.seen_calibration == [first.calib]
    assert result_b.provenance["calibration"]["cache_reused"] is True
    assert calib.read_bytes() == first.calib
    assert not list(calib.parent.glob(".*.part")), "staging files must be cleaned up"


def test_corrupt_calibration_cache_is_discarded(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    spec = make_spec(precision="int8", calibration=CALIB)
    cache.get_or_build(spec, FakeBuilder(), identity)
    cache.calibration_path(spec).write_bytes(b"garbage")
    other = make_spec(precision="int8", calibration=CALIB, workspace_mb=64)
    builder = FakeBuilder(calib=b"FRESH-TABLE")
    cache.get_or_build(other, builder, identity)
    assert builder.jobs[0].calibration_reused is False and builder.seen_calibration == [b""]
    assert cache.calibration_path(spec).read_bytes() == b"FRESH-TABLE"


def test_calibration_cache_with_stale_provenance_is_discarded(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    spec = make_spec(precision="int8", calibration=CALIB)
    cache.get_or_build(spec, FakeBuilder(), identity)
    prov_path = cache.calibration_provenance_path(spec)
    prov = json.loads(prov_path.read_text())
    prov["key_fields"]["calibration"]["count"] = 5
    prov_path.write_text(json.dumps(prov))
    builder = FakeBuilder(calib=b"RECALIBRATED")
    cache.get_or_build(make_spec(precision="int8", calibration=CALIB, workspace_mb=64), builder, identity)
    assert builder.jobs[0].calibration_reused is False
    assert cache.calibration_path(spec).read_bytes() == b"RECALIBRATED"


def test_new_calibration_set_gets_its_own_cache(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    spec = make_spec(precision="int8", calibration=CALIB)
    cache.get_or_build(spec, FakeBuilder(), identity)
    other = make_spec(precision="int8", calibration=dataclasses.replace(CALIB, set_sha256="e" * 64))
    builder = FakeBuilder(calib=b"OTHER-TABLE")
    cache.get_or_build(other, builder, identity)
    assert builder.jobs[0].calibration_reused is False
    assert cache.calibration_path(other) != cache.calibration_path(spec)
    assert cache.calibration_path(spec).exists() and cache.calibration_path(other).read_bytes() == b"OTHER-TABLE"


def test_explicitly_quantized_build_without_calibration_table(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    spec = make_spec(precision="int8", calibration=CALIB)
    result = cache.get_or_build(spec, FakeBuilder(calib=None), identity)
    assert result.provenance["calibration"]["cache_file"] is None
    assert not cache.calibration_path(spec).exists()


# ---------------------------------------------------------------------------------------------
# Atomic writes and concurrency
# ---------------------------------------------------------------------------------------------
def test_crash_mid_write_leaves_destination_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, spec = EngineCache(tmp_path), make_spec()
    cache.get_or_build(spec, FakeBuilder(payload=b"V1" * 100), identity)
    engine = cache.engine_path(spec)
    before = engine.read_bytes()
    # Make the existing entry stale so the next call rebuilds, then "crash" while publishing.
    prov_path = cache.provenance_path(spec)
    prov = json.loads(prov_path.read_text())
    prov["key_fields"]["workspace_mb"] = 1
    prov_path.write_text(json.dumps(prov))

    import mapgate.fsutil

    class OsWithReplace:
        """os for mapgate.fsutil only, with a replace() that can be made to fail."""

        def __init__(self, replace: Any) -> None:
            self.replace = replace

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

    def crash(src: Any, dst: Any) -> None:
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(mapgate.fsutil, "os", OsWithReplace(crash))
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(engine, b"V2-PARTIAL")
    assert engine.read_bytes() == before
    assert not list(engine.parent.glob(".*.part")), "temporary files must be removed"

    # Killed while publishing the engine: the stale entry was already discarded, nothing new appears.
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(spec, FakeBuilder(payload=b"V2" * 100), identity)
    assert not engine.exists() and not prov_path.exists()
    assert not list(engine.parent.glob(".*.part"))

    # Killed between publishing the engine and its provenance: the orphan engine is not trusted.
    calls = []

    def crash_second(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed before the provenance landed")
        os.replace(src, dst)

    monkeypatch.setattr(mapgate.fsutil, "os", OsWithReplace(crash_second))
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(spec, FakeBuilder(payload=b"V2" * 100), identity)
    monkeypatch.undo()
    assert engine.exists() and not prov_path.exists()
    ok, reason = cache.check(spec)
    assert not ok and "no provenance" in reason
    again = cache.get_or_build(spec, FakeBuilder(payload=b"V3" * 100), identity)
    assert again.built and engine.read_bytes() == b"V3" * 100 and cache.check(spec)[0]


def _concurrent_worker(root: str, log_path: str, start: Any, out: Any) -> None:
    def slow_build(job: BuildJob) -> bytes:
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # hold the build long enough for the other process to contend
        return b"SHARED-ENGINE" * 1000

    start.wait(10)
    result = EngineCache(Path(root), lock_timeout_s=30).get_or_build(make_spec(), slow_build, identity)
    out.put((result.built, result.value))


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    log_path = tmp_path / "builds.log"
    procs = [ctx.Process(target=_concurrent_worker, args=(str(tmp_path / "engines"), str(log_path), start, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log_path.read_text().splitlines()) == 1, "exactly one process may build"
    assert sorted(built for built, _ in results) == [False, True]
    assert results[0][1] == results[1][1] == b"SHARED-ENGINE" * 1000






def test_half_written_report_files_of_dead_runs_are_swept(tmp_path: Path) -> None:
    side = tmp_path / "reports" / "20260101-000000-1" / "m" / "onnxruntime-int8"
    side.mkdir(parents=True)
    dead = side / f".metrics.json.{HOST_TAG}-{_dead_pid()}-0000abcd.part"
    dead.write_bytes(b'{"half')
    (side / "detections.json").write_text("[]")
    assert _fresh_sweep(tmp_path / "reports") == 1
    assert not dead.exists() and (side / "detections.json").exists()


def test_a_read_only_engines_dir_still_serves_its_valid_entries(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    if not _tmpfs(mnt, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        cache = ArtifactCache(mnt)
        slot = cache.slot("m", "k", {}, ".bin")
        cache.get_or_build(slot, build_writing())
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        cache_mod._swept.discard(os.path.abspath(mnt))
        again = ArtifactCache(mnt)  # sweeping a read-only folder is quietly skipped
        assert not again.get_or_build(slot, build_writing()).built  # reading needs no lock
        with pytest.raises(StorageError, match="Read-only"):
            again.get_or_build(again.slot("m", "k", {"new": 1}, ".bin"), build_writing())
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_image_hashes_are_remembered_across_runs_and_redone_only_for_changed_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _copy_dataset(tmp_path / "coco", 8)
    engines = tmp_path / "engines"
    with cache_mod.remembered_hashes(engines):
        first = ds.fingerprint
    assert (engines / cache_mod.HASH_INDEX).is_file()
    fsutil._content_memo.clear()  # a new process
    hashed: list[str] = []
    real = fsutil.sha256_file
    monkeypatch.setattr(fsutil, "sha256_file", lambda p: hashed.append(os.fspath(p)) or real(p))
    with cache_mod.remembered_hashes(engines):
        assert CocoDataset.from_root(tmp_path / "coco").fingerprint == first
    assert hashed == []
    for image_id in ds.image_ids[:3]:
        rewrite_quant_table(ds.path_of(image_id))
    with cache_mod.remembered_hashes(engines):
        assert CocoDataset.from_root(tmp_path / "coco").fingerprint != first
    assert sorted(hashed) == sorted(str(ds.path_of(i)) for i in ds.image_ids[:3])


@pytest.mark.parametrize("index", [b"\xff", b"{}", b'[["p", "1", 2, 3, 4, "x"]]', b"[1, 2]"])
def test_a_damaged_hash_index_only_costs_rehashing(tmp_path: Path, index: bytes) -> None:
    ds = _copy_dataset(tmp_path / "coco", 2)
    truth = ds.fingerprint
    fsutil._content_memo.clear()
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / cache_mod.HASH_INDEX).write_bytes(index)
    with cache_mod.remembered_hashes(tmp_path / "engines"):
        assert ds.fingerprint == truth
