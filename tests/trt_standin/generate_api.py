"""Generate tests/trt_standin/api/<version>.json from TensorRT's own Python binding sources.

    python tests/trt_standin/generate_api.py /work/.mirror/NVIDIA+TensorRT/repo

reads, with ``git show TAG:path`` from a local mirror of github.com/NVIDIA/TensorRT, the pybind11
sources of the ``tensorrt`` module (python/src/**/*.cpp), the package's ``__init__.py`` and the C++
headers (include/*.h, for enumerator values) at each tag in :data:`TAGS`, and writes one JSON per
version: every enum with its members and values, every class with its bases and members (kind and
keyword names), the module attributes and functions, and the tag, commit and blob of every source.
The stand-in ``tensorrt`` (tests/trt_standin/tensorrt) exposes exactly these names, so the tests
never need the network. A hand-written pybind11 reader, because no tool extracts a binding's Python
surface from its C++ source (the stubs packages exist for 10.x only).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# stand-in version -> tag in NVIDIA/TensorRT (OSS releases are tagged per GA release)
TAGS = {"8.6.1": "v8.6.1", "10.3.0": "v10.3.0", "10.13.0": "v10.13.0", "11.1.0": "v11.1"}
# The full `tensorrt` module is built with EXPORT_ALL_BINDINGS=1 (the lean/dispatch ones with 0);
# ENABLE_INETWORK_SERIALIZE is an internal switch off in release builds (no serialize on INetworkDefinition
# in tensorrt-stubs 10.13); every supported pybind11 is >= 2.6.
MACROS = {"EXPORT_ALL_BINDINGS": True, "ENABLE_INETWORK_SERIALIZE": False}
MEMBER_KINDS = ("def_property_readonly_static", "def_property_readonly", "def_property_static", "def_property",
                "def_readwrite", "def_readonly_static", "def_readonly", "def_static", "def", "value")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def strip_comments(src: str) -> str:
    """C++ comments -> spaces, string and char literals kept (a '//' inside a docstring is text)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _condition(expr: str) -> bool:
    expr = expr.strip()
    if expr.startswith("PYBIND11_VERSION_MAJOR"):
        return False  # "pybind11 older than 2.6"
    if expr.startswith(("defined(_WIN32)", "!defined(WIN32_LEAN_AND_MEAN)")):
        return False  # Windows-only code (utils.cpp); the stand-in is Linux's module
    if expr in MACROS:
        return MACROS[expr]
    raise ValueError(f"unknown preprocessor condition #if {expr}")


def preprocess(src: str) -> str:
    """Keep the lines a release build of the full module compiles (#if/#else/#endif only)."""
    out, stack = [], []  # stack of (this branch active, parent active)
    for line in src.splitlines():
        d = re.match(r"\s*#\s*(if|ifdef|ifndef|else|elif|endif)\b(.*)", line)
        active = all(a for a, _ in stack)
        if not d:
            out.append(line if active else "")
            continue
        kind, rest = d.groups()
        if kind == "if":
            stack.append((_condition(rest), active))
        elif kind in ("ifdef", "ifndef"):
            stack.append((True, active))  # include guards
        elif kind == "else":
            cond, parent = stack.pop()
            stack.append((not cond, parent))
        elif kind == "elif":
            raise ValueError("#elif not handled")
        else:
            stack.pop()
        out.append("")
    return "\n".join(out)


def scan_to(src: str, start: int, stop: str) -> int:
    """Index of the first ``stop`` char at bracket depth 0 from ``start`` (strings skipped)."""
    depth, i = 0, start
    while i < len(src):
        c = src[i]
        if c in "\"'":
            j = i + 1
            while src[j] != c:
                j += 2 if src[j] == "\\" else 1
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0 and c in stop:
                return i
            depth -= 1
        elif c in stop and depth == 0:
            return i
        i += 1
    raise ValueError(f"unterminated at {start}: {src[start:start + 80]!r}")


def template_end(src: str, start: int) -> int:
    """Index of the '>' closing a template argument list opened just before ``start``."""
    depth = 0
    for i in range(start, len(src)):
        if src[i] == "<":
            depth += 1
        elif src[i] == ">":
            if depth == 0:
                return i
            depth -= 1
    raise ValueError(f"unterminated template at {start}")


def split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur, i = [], 0, [], 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            j = i + 1
            while text[j] != c:
                j += 2 if text[j] == "\\" else 1
            cur.append(text[i:j + 1])
            i = j + 1
            continue
        if c in "([{":  # not <>: lambdas hold "->" and comparisons; a split template argument is harmless here
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _literal(text: str) -> str | None:
    m = re.fullmatch(r'\s*"((?:[^"\\]|\\.)*)"\s*', text)
    return m.group(1) if m else None


def members_of(chain: str) -> list[dict[str, Any]]:
    """``.def("name", ..., "kw"_a, ...)`` and friends at depth 0 of a chained statement."""
    found = []
    for m in re.finditer(r"\.(%s)\s*\(" % "|".join(MEMBER_KINDS), chain):
        if chain[:m.start()].count("(") - chain[:m.start()].count(")") != 0:
            continue  # inside an argument (a lambda body), not a link of the chain
        end = scan_to(chain, m.end(), ")")
        args = split_top(chain[m.end():end])
        kind = m.group(1)
        name = _literal(args[0]) if args else None
        if name is None and kind == "def" and args and args[0].startswith("py::init"):
            name = "__init__"
        if name is None:
            if args and re.match(r"py::(self|detail)", args[0]):
                continue  # operator overloads (py::self == py::self)
            raise ValueError(f"cannot name member {chain[m.start():m.start() + 120]!r}")
        entry: dict[str, Any] = {"name": name, "kind": kind}
        if kind == "value":
            entry["cpp"] = args[1]
        else:
            kws = [KEYWORD.match(a) for a in args[1:]]
            entry["keywords"] = [k.group(1) or k.group(2) for k in kws if k]
            entry["keep_alive"] = re.findall(r"py::keep_alive<\s*(\d+)\s*,\s*(\d+)\s*>", chain[m.end():end])
        found.append(entry)
    return found


def cpp_enums(headers: dict[str, str]) -> dict[str, dict[str, int]]:
    """``enum [class] Name [: type] { kA = 0, kB, ... };`` -> {Name: {kA: 0, kB: 1}} from the headers."""
    enums: dict[str, dict[str, int]] = {}
    for text in headers.values():
        text = preprocess_headers(strip_comments(text))
        for m in re.finditer(r"\benum\s+(?:class\s+|struct\s+)?(\w+)\s*(?::\s*[\w:]+\s*)?\{", text):
            body = text[m.end():scan_to(text, m.end(), "}")]
            values: dict[str, Any] = {}
            nxt: int | None = 0
            for item in split_top(body):
                item = re.sub(r"\bTRT_\w+(\([^)]*\))?", "", item).strip()
                if not item:
                    continue
                key, _, expr = item.partition("=")
                key = key.strip()
                if expr.strip():
                    try:
                        nxt = _eval(expr, values)
                    except (ValueError, SyntaxError, KeyError):
                        nxt = None  # refers to a constant outside the enum: unknown, never guessed
                values[key] = nxt
                nxt = None if nxt is None else nxt + 1
            enums.setdefault(m.group(1), values)
    return enums


def preprocess_headers(text: str) -> str:
    return re.sub(r"^\s*#.*$", "", text, flags=re.M)


def _eval(expr: str, known: dict[str, int]) -> int:
    expr = re.sub(r"(\d+)[uUlL]+\b", r"\1", expr.strip())
    expr = re.sub(r"static_cast<\w+>", "", expr)
    tree = ast.parse(expr, mode="eval")

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp):
            ops = {ast.LShift: int.__lshift__, ast.BitOr: int.__or__, ast.Add: int.__add__, ast.Sub: int.__sub__}
            return ops[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"enumerator value {expr!r}")

    return ev(tree)


KEYWORD = re.compile(r'"(\w+)"_a|py::arg\(\s*"(\w+)"\s*\)')
START = re.compile(r"py::(class_|enum_)\s*<")


def bindings(sources: dict[str, str]) -> tuple[dict, dict, dict, list]:
    """(classes, enums, module attrs, module functions) of the pybind11 sources."""
    classes: dict[str, dict[str, Any]] = {}
    enums: dict[str, dict[str, Any]] = {}
    attrs: dict[str, str] = {}
    functions: list[dict[str, Any]] = []
    cpp_names: dict[str, str] = {}
    for path, raw in sources.items():
        src = preprocess(strip_comments(raw))
        variables: dict[str, str] = {}  # C++ variable holding a class_ -> its Python name
        for m in START.finditer(src):
            targ_end = template_end(src, m.end())
            targs = split_top(src[m.end():targ_end])
            after = src[targ_end + 1:]
            head = re.match(r"\s*(\w+)?\s*[({]", after)
            if not head:
                continue  # a type mention, not a binding
            open_at = targ_end + 1 + head.end()
            close = scan_to(src, open_at, ")}")
            ctor = split_top(src[open_at:close])
            name = _literal(ctor[1]) if len(ctor) > 1 else None
            if name is None:
                raise ValueError(f"{path}: unnamed binding {src[m.start():m.start() + 120]!r}")
            scope = ctor[0]
            stmt_end = scan_to(src, close + 1, ";")
            members = members_of(src[close + 1:stmt_end])
            cpp = targs[0].replace("nvinfer1::", "").replace("nvonnxparser::", "").strip()
            owner = variables.get(scope) if scope != "m" else None
            if scope not in ("m",) and owner is None:
                owner = scope  # e.g. a class_ passed by name; resolved below
            if head.group(1):
                variables[head.group(1)] = name
            if m.group(1) == "enum_":
                enums[f"{owner}.{name}" if owner else name] = {
                    "cpp": cpp, "source": path, "members": {e["name"]: e["cpp"] for e in members if e["kind"] == "value"}}
            else:
                cpp_names[cpp] = name
                classes[name] = {"cpp": cpp, "template": targs[1:], "source": path, "members": members}
        for var, name in variables.items():  # later `var.def(...)` statements
            for m in re.finditer(r"(?<![\w.])%s\s*\.(?=def|value)" % re.escape(var), src):
                end = scan_to(src, m.start(), ";")
                classes[name]["members"] += members_of(src[m.end() - 1:end])
        for m in re.finditer(r"(?<![\w.])m\.attr\(\s*\"(\w+)\"\s*\)\s*=\s*([^;]+);", src):
            attrs[m.group(1)] = m.group(2).strip()
        for m in re.finditer(r"(?<![\w.])m\.def\(", src):
            end = scan_to(src, m.end(), ")")
            args = split_top(src[m.end():end])
            functions.append({"name": _literal(args[0]), "keywords": [k.group(1) or k.group(2) for a in args[1:]
                                                                       if (k := KEYWORD.match(a))]})
        for m in re.finditer(r"py::bind_vector<[^;]*?>\(\s*m\s*,\s*\"(\w+)\"", src):
            classes[m.group(1)] = {"cpp": "std::vector", "template": [], "source": path, "members": []}
    for info in classes.values():
        info["bases"] = [cpp_names[t.strip()] for t in info.pop("template") if t.strip() in cpp_names]
    return classes, enums, attrs, functions


def python_package(text: str) -> dict[str, Any]:
    """Top-level names the package's __init__.py adds next to `from .tensorrt import *`."""
    return {"functions": re.findall(r"^def (\w+)\(", text, flags=re.M),
            "attributes": re.findall(r"^(\w+) = ", text, flags=re.M),
            "class_attributes": sorted(set(re.findall(r"^(\w+\.\w+) = ", text, flags=re.M)))}


def generate(repo: Path, version: str, tag: str) -> dict[str, Any]:
    commit = git(repo, "rev-parse", f"{tag}^{{commit}}").strip()
    files = git(repo, "ls-tree", "-r", "--name-only", tag, "python/src", "include").split()
    cpp = [f for f in files if f.startswith("python/src/") and f.endswith(".cpp")]
    headers = [f for f in files if f.startswith("include/") and f.endswith(".h")]
    init = "python/packaging/bindings_wheel/tensorrt/__init__.py"
    blobs = {f: git(repo, "rev-parse", f"{tag}:{f}").strip() for f in [*cpp, init, *headers]}
    sources = {f: git(repo, "show", f"{tag}:{f}") for f in cpp}
    classes, enums, attrs, functions = bindings(sources)
    values = cpp_enums({h: git(repo, "show", f"{tag}:{h}") for h in headers})
    out_enums = {}
    for name, info in sorted(enums.items()):
        members = {}
        for member, expr in info["members"].items():
            parts = [p for p in expr.replace("nvinfer1::", "").replace("nvonnxparser::", "").split("::") if p]
            table = values.get(parts[-2]) if len(parts) >= 2 else None
            if table is not None and table.get(parts[-1]) is not None:
                members[member] = table[parts[-1]]
            else:  # the header is not in this repository (the ONNX parser's is a submodule): declaration order
                members[member] = None
        if any(v is None for v in members.values()):
            members = {k: i for i, k in enumerate(members)}
            source = "declaration order (header not in the repository)"
        else:
            source = "include/*.h"
        out_enums[name] = {"source": info["source"], "values_from": source, "members": members}
    return {
        "version": version, "repository": "https://github.com/NVIDIA/TensorRT", "tag": tag, "commit": commit,
        "generated_by": "tests/trt_standin/generate_api.py", "sources": blobs,
        "enums": out_enums,
        "classes": {n: {"bases": c["bases"], "source": c["source"],
                        "members": _merge(c["members"])} for n, c in sorted(classes.items())},
        "module_attributes": {k: _attribute(v, enums) for k, v in sorted(attrs.items())},
        "module_functions": {f["name"]: {"keywords": f["keywords"]} for f in functions},
        "package": python_package(git(repo, "show", f"{tag}:{init}")),
    }


def _attribute(expr: str, enums: dict[str, dict[str, Any]]) -> str:
    """``DataType::kFLOAT`` -> "DataType.FLOAT"; ``m.attr("SampleMode")`` -> "SampleMode" (an alias)."""
    alias = re.fullmatch(r'm\.attr\("(\w+)"\)', expr)
    if alias:
        return alias.group(1)
    for name, info in enums.items():
        for member, cpp in info["members"].items():
            if cpp.replace("nvinfer1::", "") == expr.replace("nvinfer1::", ""):
                return f"{name}.{member}"
    return f"<object {expr}>"  # not an enum value (a plugin registry...): the stand-in leaves it unmodeled


def _merge(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Overloads (several .def of one name) -> one entry with every keyword list."""
    out: dict[str, Any] = {}
    for e in members:
        if e["kind"] == "value":
            continue  # enums are listed under "enums"
        slot = out.setdefault(e["name"], {"kind": e["kind"], "overloads": []})
        if e.get("keywords") is not None and e["keywords"] not in slot["overloads"]:
            slot["overloads"].append(e["keywords"])
        for pair in e.get("keep_alive", []):
            if list(map(int, pair)) not in slot.setdefault("keep_alive", []):
                slot["keep_alive"].append(list(map(int, pair)))
    return dict(sorted(out.items()))


def main(repo: Path) -> None:
    out = HERE / "api"
    out.mkdir(exist_ok=True)
    for version, tag in TAGS.items():
        data = generate(repo, version, tag)
        (out / f"{version}.json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        print(f"{version}: {tag} {data['commit'][:12]}: {len(data['classes'])} classes, {len(data['enums'])} enums")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
