"""Careless `mapgate int8-repair` command lines: each is one error (exit 2) naming the option, before
a model is loaded, and no file the user gave is overwritten or created."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile_helpers import Sandbox, cli

MODEL = "yolo-fastest-1.1-320"


def _repair(out: Path, *extra: object) -> list[object]:
    return ["int8-repair", "--model", MODEL, "--out", out, "--no-progress", "--no-verify", *extra]


@pytest.mark.parametrize(("value", "says"), [
    ("0", "> 0"),              # a zero speed bar would accept any slowdown and read as a limit
    ("-1.2", "> 0"),
    ("nan", "finite"),         # NaN compares false with every speedup: the search would never pay
    ("inf", "finite"),
    ("fast", "expected a number"),
    ("", "expected a number"),
    ("1,2", "expected a number"),
])
def test_a_bad_min_speedup_is_one_usage_error(capsys: pytest.CaptureFixture, sandbox: Sandbox, value: str,
                                              says: str) -> None:
    out = sandbox.root / "recipe.toml"
    code, err = cli(capsys, *_repair(out, "--min-speedup", value))
    assert code == 2
    assert "argument --min-speedup" in err and says in err and err.count("error:") == 1
    assert not out.exists()
    sandbox.assert_only_new_under()


@pytest.mark.parametrize("methods", ["", ",", " , "])
def test_an_empty_methods_list_is_refused(capsys: pytest.CaptureFixture, sandbox: Sandbox, methods: str) -> None:
    out = sandbox.root / "recipe.toml"
    code, err = cli(capsys, *_repair(out, "--methods", methods))
    assert code == 2
    assert "--methods" in err and "empty list" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    sandbox.assert_only_new_under()


def test_an_unknown_method_is_named(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    out = sandbox.root / "recipe.toml"
    code, err = cli(capsys, *_repair(out, "--methods", "minmax,kl"))
    assert code == 2 and "'kl' not in minmax, percentile, entropy" in err
    assert not out.exists()
    sandbox.assert_only_new_under()


def _same_as_out(out: Path) -> list[Path]:
    return [out, out.parent / "sub" / ".." / out.name]


@pytest.mark.parametrize("spelling", [0, 1])
@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_a_record_or_plot_path_equal_to_out_is_refused(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                       option: str, spelling: int) -> None:
    """--json equal to --out used to overwrite the recipe with the JSON record."""
    out = sandbox.root / "recipe.toml"
    (sandbox.root / "sub").mkdir()
    sandbox.before = {*sandbox.before, "sub"}
    code, err = cli(capsys, *_repair(out, option, _same_as_out(out)[spelling]))
    assert code == 2
    assert f"{option} " in err and "is the same file as --out" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    sandbox.assert_only_new_under()


def test_json_equal_to_an_existing_out_leaves_the_recipe_alone_even_with_force(
        capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    out = sandbox.root / "recipe.toml"
    out.write_text("# my reviewed recipe\n")
    link = sandbox.root / "record.json"
    link.symlink_to(out)  # the same file under another name
    sandbox.before = {*sandbox.before, "recipe.toml", "record.json"}
    code, err = cli(capsys, *_repair(out, "--json", link, "--force"))
    assert code == 2 and "--json" in err and "is the same file as --out" in err
    assert out.read_text() == "# my reviewed recipe\n"
    sandbox.assert_only_new_under()


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_an_existing_record_or_plot_is_not_overwritten_without_force(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                     option: str) -> None:
    out = sandbox.root / "recipe.toml"
    other = sandbox.root / "mine.bin"
    other.write_bytes(b"keep me")
    sandbox.before = {*sandbox.before, "mine.bin"}
    code, err = cli(capsys, *_repair(out, option, other))
    assert code == 2 and f"{option} {other} exists" in err and "--force" in err
    assert other.read_bytes() == b"keep me" and not out.exists()
    sandbox.assert_only_new_under()


def test_a_folder_for_the_record_is_refused(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    out = sandbox.root / "recipe.toml"
    code, err = cli(capsys, *_repair(out, "--json", sandbox.root))
    assert code == 2 and "argument --json" in err and "is a folder" in err
    sandbox.assert_only_new_under()


@pytest.mark.parametrize(("forms", "says"), [("", "empty list"), ("conv", "conv is not OPS/ACT"),
                                             ("conv/s8,all/u16", "all/u16 is not OPS/ACT"),
                                             ("depthwise/s8", "depthwise/s8 is not OPS/ACT")])
def test_a_bad_forms_list_is_one_error_naming_the_form(capsys: pytest.CaptureFixture, sandbox: Sandbox, forms: str,
                                                       says: str) -> None:
    out = sandbox.root / "recipe.toml"
    code, err = cli(capsys, *_repair(out, "--forms", forms))
    assert code == 2 and "--forms" in err and says in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    sandbox.assert_only_new_under()


def test_a_cpu_only_form_for_tensorrt_is_refused(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    out = sandbox.root / "recipe.toml"
    code, err = cli(capsys, *_repair(out, "--target", "tensorrt:int8", "--forms", "all/u8"))
    assert code == 2 and "tensorrt:int8 builds from convolution Q/DQ with S8 activations only" in err
    sandbox.assert_only_new_under()
