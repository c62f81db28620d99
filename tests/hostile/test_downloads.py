"""Hostile downloads and tarballs (issue 11 items 7 and 8), never touching the network: a local
http.server on 127.0.0.1 and --mirror folders.

https only (plain http only with MAPGATE_ALLOW_HTTP=1); a file whose sha256 does not match is never
kept; a tarball member is extracted into a temporary folder with tarfile's data filter, checked, then
moved into the cache; links, devices, absolute names and '..' never reach the disk."""

from __future__ import annotations

import functools
import http.server
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostile_helpers import FIXTURES, Sandbox, cli
from mapgate.errors import DataError
from mapgate.files import resolve
from mapgate.fsutil import sha256_bytes, sha256_file
from mapgate.manifest import FileRef

ONNX = FIXTURES / "models" / "yolox-nano" / "yolox_nano.onnx"
PAYLOAD = ONNX.read_bytes()[:4096]  # real bytes, small enough to serve many times
MEMBER = "pkg_2018/frozen_inference_graph.pb"


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        if self.path.startswith("/redirect-to-file"):
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """(base URL, served folder, request log) of an http server on 127.0.0.1, stopped after the test."""
    served = tmp_path / "served"
    served.mkdir()
    log: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": log})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served, log
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _online(monkeypatch: pytest.MonkeyPatch, allow_http: bool = True) -> None:
    monkeypatch.delenv("MAPGATE_OFFLINE", raising=False)
    if allow_http:
        monkeypatch.setenv("MAPGATE_ALLOW_HTTP", "1")


def _cache(sandbox: Sandbox) -> Path:
    return sandbox.root / "out" / "cache"


def test_plain_http_is_refused_unless_allowed_and_nothing_is_requested(sandbox: Sandbox, server, monkeypatch) -> None:
    base, served, log = server
    (served / "m.onnx").write_bytes(PAYLOAD)
    _online(monkeypatch, allow_http=False)
    ref = FileRef("model", sha256_bytes(PAYLOAD), url=f"{base}/m.onnx")
    with pytest.raises(DataError) as exc:
        resolve("dl", ref)
    assert f"{base}/m.onnx" in str(exc.value) and "MAPGATE_ALLOW_HTTP=1" in str(exc.value)
    assert log == []
    sandbox.assert_only_new_under("served")


def test_an_allowed_http_download_is_verified_and_kept_with_the_users_umask(sandbox: Sandbox, server,
                                                                           monkeypatch) -> None:
    base, served, log = server
    (served / "m.onnx").write_bytes(PAYLOAD)
    _online(monkeypatch)
    path = resolve("dl", FileRef("model", sha256_bytes(PAYLOAD), url=f"{base}/m.onnx"))
    assert path == _cache(sandbox) / "downloads" / "m.onnx" and path.read_bytes() == PAYLOAD
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert log == ["/m.onnx"]
    sandbox.assert_only_new_under("served", "out/cache/downloads")


def test_a_download_whose_hash_does_not_match_leaves_nothing_behind(sandbox: Sandbox, server, monkeypatch) -> None:
    base, served, _ = server
    (served / "m.onnx").write_bytes(PAYLOAD + b"tampered")
    _online(monkeypatch)
    with pytest.raises(DataError) as exc:
        resolve("dl", FileRef("model", sha256_bytes(PAYLOAD), url=f"{base}/m.onnx"))
    assert "sha256 mismatch" in str(exc.value) and "'dl'" in str(exc.value)
    downloads = _cache(sandbox) / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []  # no file, no .part
    sandbox.assert_only_new_under("served", "out/cache/downloads")


def test_a_redirect_to_a_file_url_is_refused(sandbox: Sandbox, server, monkeypatch) -> None:
    base, _, log = server
    _online(monkeypatch)
    with pytest.raises(DataError) as exc:
        resolve("dl", FileRef("model", sha256_bytes(PAYLOAD), url=f"{base}/redirect-to-file/m.onnx"))
    assert "file:///etc/passwd" in str(exc.value) and "root:" not in str(exc.value)
    assert log == ["/redirect-to-file/m.onnx"]
    sandbox.assert_only_new_under("served", "out/cache/downloads")


def test_a_missing_download_is_an_error_naming_the_url_and_the_mirror_fix(sandbox: Sandbox, server,
                                                                         monkeypatch) -> None:
    base, _, _ = server
    _online(monkeypatch)
    with pytest.raises(DataError) as exc:
        resolve("dl", FileRef("model", None, url=f"{base}/gone.onnx"))
    assert f"{base}/gone.onnx" in str(exc.value) and "--mirror" in str(exc.value)
    sandbox.assert_only_new_under("served", "out/cache/downloads")


def test_a_cached_download_that_no_longer_matches_is_deleted(sandbox: Sandbox, monkeypatch) -> None:
    cached = _cache(sandbox) / "downloads" / "m.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD + b"bit rot")
    with pytest.raises(DataError, match="cached copy was deleted"):
        resolve("dl", FileRef("model", sha256_bytes(PAYLOAD), url="https://example.invalid/m.onnx"))
    assert not cached.exists()
    sandbox.assert_only_new_under("out/cache/downloads")


def test_a_mirror_file_that_does_not_match_is_an_error_and_stays_the_users(sandbox: Sandbox) -> None:
    mirror = sandbox.root / "mirror"
    mirror.mkdir()
    (mirror / "m.onnx").write_bytes(PAYLOAD + b"x")
    with pytest.raises(DataError) as exc:
        resolve("dl", FileRef("model", sha256_bytes(PAYLOAD), url="https://example.invalid/m.onnx"), mirror=mirror)
    assert str(mirror / "m.onnx") in str(exc.value) and "sha256 mismatch" in str(exc.value)
    assert (mirror / "m.onnx").exists()
    sandbox.assert_only_new_under("mirror")


# ------------------------------------------------------------------------- tarballs from a mirror


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _tar_ref(member: str = MEMBER, sha: str | None = None) -> FileRef:
    return FileRef("graph", sha or sha256_bytes(PAYLOAD), url="https://example.invalid/pkg_2018.tar.gz", member=member)


def test_only_the_named_member_is_extracted_and_hostile_neighbours_never_land(sandbox: Sandbox) -> None:
    """Issue 11 item 7: '../../../x' and '/abs/path' members were written outside the cache."""
    mirror = sandbox.root / "mirror"
    _tar(mirror / "pkg_2018.tar.gz", [_file("../../../evil.pth", b"import os"), _file("/tmp/abs-evil.pth", b"x"),
                                      _special("pkg_2018/link", tarfile.SYMTYPE, "/etc/passwd"),
                                      _file(MEMBER, PAYLOAD)])
    path = resolve("tar", _tar_ref(), mirror=mirror)
    assert path.read_bytes() == PAYLOAD and path.is_relative_to(_cache(sandbox) / "extracted")
    assert not Path("/tmp/abs-evil.pth").exists()
    sandbox.assert_only_new_under("mirror", "out/cache/extracted")
    assert not [p for p in (_cache(sandbox) / "extracted").rglob("*") if p.name.startswith(".extract-")]


@pytest.mark.parametrize(("member", "says"), [
    (_special(MEMBER, tarfile.SYMTYPE, "/etc/passwd"), "not a regular file"),
    (_special(MEMBER, tarfile.LNKTYPE, "pkg_2018/other"), "not a regular file"),
    (_special(MEMBER, tarfile.CHRTYPE), "not a regular file"),
    (_special(MEMBER, tarfile.DIRTYPE), "not a regular file"),
], ids=["symlink", "hardlink", "device", "folder"])
def test_a_member_that_is_a_link_or_device_is_refused(sandbox: Sandbox, member, says: str) -> None:
    mirror = sandbox.root / "mirror"
    _tar(mirror / "pkg_2018.tar.gz", [member])
    with pytest.raises(DataError) as exc:
        resolve("tar", _tar_ref(), mirror=mirror)
    assert "pkg_2018.tar.gz" in str(exc.value) and MEMBER in str(exc.value) and says in str(exc.value)
    assert not [p for p in (_cache(sandbox) / "extracted").rglob("*") if p.is_file() or p.is_symlink()]
    sandbox.assert_only_new_under("mirror", "out/cache/extracted")


def test_a_member_whose_hash_does_not_match_is_not_kept(sandbox: Sandbox) -> None:
    mirror = sandbox.root / "mirror"
    _tar(mirror / "pkg_2018.tar.gz", [_file(MEMBER, PAYLOAD + b"tampered")])
    with pytest.raises(DataError, match="sha256 mismatch"):
        resolve("tar", _tar_ref(), mirror=mirror)
    assert not [p for p in (_cache(sandbox) / "extracted").rglob("*") if p.is_file()]
    sandbox.assert_only_new_under("mirror", "out/cache/extracted")


def test_the_archive_hash_is_checked_before_the_archive_is_opened(sandbox: Sandbox) -> None:
    mirror = sandbox.root / "mirror"
    archive = _tar(mirror / "pkg_2018.tar.gz", [_file(MEMBER, PAYLOAD)])
    ref = FileRef("graph", sha256_bytes(PAYLOAD), url="https://example.invalid/pkg_2018.tar.gz", member=MEMBER,
                  archive_sha256="0" * 64)
    with pytest.raises(DataError) as exc:
        resolve("tar", ref, mirror=mirror)
    assert "sha256 mismatch" in str(exc.value) and sha256_file(archive) in str(exc.value)
    assert not (_cache(sandbox) / "extracted").exists()
    sandbox.assert_only_new_under("mirror")


@pytest.mark.parametrize(("content", "member", "says"), [
    (b"not a tarball at all", MEMBER, "not a readable tarball"),
    (None, "pkg_2018/other.pb", "has no member"),
])
def test_a_broken_archive_or_missing_member_is_an_error_naming_both(sandbox: Sandbox, content: bytes | None,
                                                                   member: str, says: str) -> None:
    mirror = sandbox.root / "mirror"
    archive = mirror / "pkg_2018.tar.gz"
    if content is None:
        _tar(archive, [_file(MEMBER, PAYLOAD)])
    else:
        mirror.mkdir()
        archive.write_bytes(content)
    with pytest.raises(DataError) as exc:
        resolve("tar", _tar_ref(member), mirror=mirror)
    assert str(archive) in str(exc.value) and says in str(exc.value)
    sandbox.assert_only_new_under("mirror", "out/cache/extracted")


def test_a_download_mismatch_through_the_cli_is_exit_2_and_leaves_no_file(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, server, monkeypatch) -> None:
    base, served, _ = server
    (served / "yolox_nano.onnx").write_bytes(PAYLOAD)  # not the file the manifest pins
    _online(monkeypatch)
    manifest = sandbox.root / "m" / "models.toml"
    manifest.parent.mkdir()
    manifest.write_text(f'''
[models.dl]
family = "yolox"
format = "onnx"
reference_backend = "onnxruntime"
input_size = [416, 416]
files.model = {{ url = "{base}/yolox_nano.onnx", sha256 = "{sha256_file(ONNX)}" }}
[models.dl.preprocess]
resize = "letterbox"
letterbox_align = "topleft"
color = "BGR"
[models.dl.postprocess]
score_threshold = 0.01
multi_label = false
''')
    code, err = cli(capsys, "eval", "--models-file", manifest, "--model", "dl", "--backend", "onnxruntime",
                    "--max-images", 1, "--no-progress", "--out", sandbox.root / "out" / "side")
    assert code == 2 and "sha256 mismatch" in err and "'dl'" in err and "yolox_nano.onnx" in err
    assert not (_cache(sandbox) / "downloads" / "yolox_nano.onnx").exists()
    sandbox.assert_only_new_under("served", "m", "out/cache/downloads", "out/engines")
