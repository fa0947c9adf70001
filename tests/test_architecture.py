"""The package's architecture rules, read from its syntax (``ast``, nothing is imported).

Rules (docs/ARCHITECTURE.md): a module has at most 500 lines; a function body at most 60
code lines (its docstring, blank and comment-only lines excluded); imports go only down
the layer table below, function-level and ``TYPE_CHECKING`` imports included; a
function-level import names a heavy optional package only; no import cycle between
the package's modules.

Each rule has three tests:

- ``test_rule[...]``: the rule itself. While a rule has known offenders it is marked
  ``xfail(strict=True)`` with the offenders in its reason; a strict xfail that passes
  fails the suite, so the mark must go once the last offender is fixed.
- ``test_no_new_offenders[...]``: today's violations are a subset of the rule's
  ``KNOWN_*`` allow-list, so new code cannot add one (the message names it).
- ``test_known_offenders_still_offend[...]``: an entry that no longer violates must be
  removed from its list: the lists only shrink.

A module missing from :data:`LAYERS` fails ``test_every_module_has_a_layer``: add it
to the room it belongs to.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE = "napari_recist_seg"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

MAX_MODULE_LINES = 500
MAX_FUNCTION_CODE_LINES = 60

#: Rooms from the bottom (0) up: a module may import its own layer (cycles are a
#: separate rule) and the layers below it, never a layer above. A dotted key covers the
#: module and everything under it (``data`` -> ``data.images``, ...); the longest key
#: wins. ``__init__`` is the package root (only ``__version__``).
LAYERS: dict[str, int] = {
    "__init__": 0,
    "recist": 0,
    "recist_geometry": 0,  # pure array helpers under recist (no Recist)
    "mask_holes": 0,  # fill_holes: binary_fill_holes' pixels by one flood fill
    "progress": 0,
    "data": 1,
    "preprocess": 2,
    "polarity": 2,  # lesion brighter than its surroundings: the model sees it inverted
    "targets": 2,  # re-exports ellipse and grabcut
    "ellipse": 2,
    "grabcut": 2,
    "grabcut_blend": 2,  # the model's mask blended with GrabCut (the calibration's knob)
    "metrics": 2,
    "model": 2,  # re-exports network and checkpoint
    "network": 2,
    "checkpoint": 2,
    "clusters": 2,
    "runtime": 2,
    "tta": 2,  # test-time flips around the network runner (numpy only)
    "checkpoint_checks": 1,  # imports nothing of the package; model raises its errors
    "intensity": 1,  # modality and windows: the readers and preprocessing use it
    "graph": 2,
    "quantize": 2,  # the INT8 copy of the stored graph (onnxruntime.quantization at build time)
    "refine": 3,
    "calibration": 3,  # a clinic's annotation style from curated masks (Predictor + refine)
    "selftrain": 3,  # self-training targets: refine + GrabCut, numpy / OpenCV only
    "finetune": 3,  # fine-tuning on curated masks (beside training)
    "corrective": 3,  # corrective clicks: numpy / OpenCV only
    "pairing": 4,
    "hand_edits": 4,
    "_image_reader": 6,
    "predict": 3,
    "click": 3,  # the click heuristics (Predictor.segment_click)
    "postprocess": 3,  # LesionResult, component selection, measuring a mask
    "stored_graph": 3,  # a Predictor on the checkpoint's ONNX graph (no torch)
    "image_checks": 2,  # the predictor's input rules
    "upsample": 2,  # edge-aware upsampling of the probability (numpy / OpenCV)
    "training": 3,  # a package: config, samples, losses, distributed, checkpoint, loop
    "click_check": 3,  # refuses click results; uses click's features
    "click_rank": 3,  # click mode with a learned chooser over RECIST chains (uses click)
    "propagate": 2,  # a mask from slice to slice (recist, polarity)
    "propagate_intensity": 2,  # the lesion's intensity band and blend (numpy only)
    "annotation": 4,  # a package: units, segmenters, requests, paste, lesions, session, export
    "annotation.recovery": 4,  # autosave / restore entries of the annotator (numpy, files)
    "curation": 4,  # fine-tuning on curated images; re-exports the two below
    "curation_images": 4,  # AnnotatedImage, training samples, hold-out split
    "curation_save": 4,  # a curation saved as a dataset folder
    "measurements": 4,  # measurement columns and rows (segment job and annotator)
    "jobs": 5,
    "cli": 6,
    "__main__": 6,
    "_widgets": 6,
    "_reader": 6,
    "_sample_data": 6,
    "_launch": 6,
}
LAYER_NAMES = ("recist/progress", "data", "core", "predict/training",
               "annotation/curation", "jobs", "cli/_widgets")

#: Third-party packages that a function may import lazily: slow to import, optional at
#: run time or pulling in a GUI, so the CLI and the plugin's start stay fast.
HEAVY_PACKAGES = frozenset({
    "torch", "torchvision", "onnx", "onnxruntime", "triton", "segmentation_models_pytorch",
    "safetensors", "huggingface_hub", "napari", "qtpy", "PyQt5", "PyQt6", "PySide2",
    "PySide6", "matplotlib", "cv2", "nibabel", "pydicom", "PIL", "tifffile", "scipy",
    "sklearn", "skimage", "imageio", "medpy", "timm",
})

#: The stacks behind the deferral: a package module that loads one of these when it
#: is imported (torch: seconds and a GPU runtime; napari / Qt: a GUI, and triton after
#: OpenGL crashes napari, see ``_widgets/annotator_torch.py``) is itself heavy, and a
#: function may import it lazily.
HEAVY_STACKS = frozenset({
    "torch", "torchvision", "onnxruntime", "triton", "segmentation_models_pytorch",
    "napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6",
})

#: The command line imports a command's job only when that command runs:
#: ``recist-seg --help`` starts in about 0.3 s instead of 1.2 to 1.7 s (measured in #15);
#: likewise ``view``'s launcher (``_launch`` -> ``_image_reader`` -> ``data.images``
#: brings numpy: ``import napari_recist_seg.cli`` 15 ms instead of 85 ms).
LAZY_ALLOWED: frozenset[tuple[str, str]] = frozenset({("cli", "jobs"), ("cli", "_launch")})

# Known offenders, as of the architecture issue (#15); the big modules are split in a
# second wave. These lists must only shrink.
KNOWN_LONG_MODULES: frozenset[str] = frozenset()
KNOWN_LONG_FUNCTIONS: frozenset[str] = frozenset()
KNOWN_UPWARD_IMPORTS: frozenset[str] = frozenset()
KNOWN_LAZY_IMPORTS: frozenset[str] = frozenset({
    "_widgets._common -> _widgets.annotator_torch",
    "_widgets._common -> annotation",
    "_widgets._common -> curation",
    "_widgets._common -> data",
    "_widgets.bulk -> curation",
    "_widgets.bulk -> data",
    "_widgets.bulk -> jobs.segment",
})
KNOWN_CYCLES: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to a package module when it is one."""

    importer: str  # module name relative to the package ("data.images")
    target: str  # package module ("recist") or third-party top-level name ("torch")
    internal: bool
    lazy: bool  # inside a function
    line: int
    type_only: bool = False  # under ``if TYPE_CHECKING:``


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """``{module name: file}`` for every ``.py`` file of the package."""
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


@cache
def _tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(encoding="utf-8"))


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _internal(dotted: str) -> str | None:
    """``napari_recist_seg.x.y`` -> ``x.y`` (``__init__`` for the root), else None."""
    if dotted == PACKAGE:
        return "__init__"
    if dotted.startswith(PACKAGE + "."):
        return dotted[len(PACKAGE) + 1:]
    return None


def _resolve_from(importer: str, node: ast.ImportFrom) -> list[str]:
    """Absolute dotted targets of ``from X import a, b`` (``X.a`` where it is a module)."""
    if node.level:
        base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        if importer == "__init__":
            base = []
        module = ".".join([PACKAGE, *base] + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    out = []
    for alias in node.names:
        sub = _internal(f"{module}.{alias.name}")
        out.append(f"{module}.{alias.name}" if sub in modules() else module)
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, lazy: bool = False,
          type_only: bool = False) -> Iterator[tuple[ast.AST, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, lazy, type_only
        yield from _walk(
            child,
            lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
            type_only or _is_type_checking(child),
        )


@cache
def imports() -> tuple[Import, ...]:
    """Every import of every module, function-level and ``TYPE_CHECKING`` ones included."""
    found = []
    for name in modules():
        for node, lazy, type_only in _walk(_tree(name)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve_from(name, node)
            else:
                continue
            for dotted in targets:
                if dotted == "__future__":
                    continue
                sub = _internal(dotted)
                if sub is not None:
                    found.append(Import(name, sub, True, lazy, node.lineno, type_only))
                else:
                    found.append(Import(name, dotted.split(".")[0], False, lazy, node.lineno,
                                        type_only))
    return tuple(found)


def layer(name: str) -> int | None:
    """The layer of module ``name`` by its longest dotted prefix in :data:`LAYERS`."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    return None


# --------------------------------------------------------------------------- rules


def long_modules() -> dict[str, str]:
    out = {}
    for name, path in modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            out[name] = f"{name}: {n} lines > {MAX_MODULE_LINES}"
    return out


def _code_lines(source: str) -> set[int]:
    """Line numbers holding code: not blank, not only a comment."""
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            qual = f"{prefix}{child.name}"
            yield qual, child
            yield from _functions(child, f"{qual}.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def function_code_lines(name: str) -> dict[str, int]:
    """``{qualified function name: code lines of its body}`` for module ``name``."""
    tree = _tree(name)
    code = _code_lines(modules()[name].read_text(encoding="utf-8")) - _docstring_lines(tree)
    out = {}
    for qual, fn in _functions(tree):
        first, last = fn.body[0].lineno, fn.body[-1].end_lineno
        out[qual] = len([n for n in code if first <= n <= last])
    return out


def long_functions() -> dict[str, str]:
    out = {}
    for name in modules():
        for qual, n in function_code_lines(name).items():
            if n > MAX_FUNCTION_CODE_LINES:
                out[f"{name}:{qual}"] = f"{name}:{qual}: {n} code lines > {MAX_FUNCTION_CODE_LINES}"
    return out


def upward_imports() -> dict[str, str]:
    out = {}
    for imp in imports():
        if not imp.internal or imp.target not in modules():
            continue
        low, high = layer(imp.importer), layer(imp.target)
        if low is not None and high is not None and high > low:
            key = f"{imp.importer} -> {imp.target}"
            out.setdefault(key, f"{key} (line {imp.line}): layer {LAYER_NAMES[low]!r} "
                                f"imports the higher {LAYER_NAMES[high]!r}")
    return out


@cache
def heavy_modules() -> frozenset[str]:
    """Package modules that load a :data:`HEAVY_STACKS` package when imported
    (module-level imports, followed through the package): deferring one is deferring
    torch or napari."""
    heavy: set[str] = set()
    changed = True
    while changed:
        changed = False
        for imp in imports():
            if imp.lazy or imp.type_only or imp.importer in heavy:
                continue
            if (imp.target in heavy) if imp.internal else (imp.target in HEAVY_STACKS):
                heavy.add(imp.importer)
                changed = True
    return frozenset(heavy)


def lazy_imports() -> dict[str, str]:
    out = {}
    for imp in imports():
        if imp.internal:
            allowed = imp.target in heavy_modules() or any(
                imp.importer == who and (imp.target == room or imp.target.startswith(f"{room}."))
                for who, room in LAZY_ALLOWED)
        else:
            allowed = imp.target in HEAVY_PACKAGES
        if imp.lazy and not allowed:
            key = f"{imp.importer} -> {imp.target}"
            out.setdefault(key, f"{key} (line {imp.line}): a function-level import of "
                                f"{'a package module' if imp.internal else 'a light package'}")
    return out


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in imports():
        if imp.internal and imp.target in modules() and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def import_cycles() -> dict[str, str]:
    out = {}
    for component in strongly_connected(import_graph()):
        if len(component) > 1:
            key = " <-> ".join(component)
            out[key] = f"import cycle: {key}"
    return out


RULES: dict[str, tuple[Callable[[], dict[str, str]], frozenset[str]]] = {
    "module_lines": (long_modules, KNOWN_LONG_MODULES),
    "function_lines": (long_functions, KNOWN_LONG_FUNCTIONS),
    "imports_go_down": (upward_imports, KNOWN_UPWARD_IMPORTS),
    "lazy_imports_heavy_only": (lazy_imports, KNOWN_LAZY_IMPORTS),
    "no_import_cycles": (import_cycles, KNOWN_CYCLES),
}


def _rule_param(rule: str) -> object:
    known = RULES[rule][1]
    if not known:
        return rule
    reason = f"{len(known)} known offenders (wave 2 splits): " + "; ".join(sorted(known))
    return pytest.param(rule, marks=pytest.mark.xfail(strict=True, reason=reason))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("rule", [_rule_param(r) for r in RULES])
def test_rule(rule):
    violations = RULES[rule][0]()
    assert not violations, "\n".join(violations[k] for k in sorted(violations))


@pytest.mark.parametrize("rule", list(RULES))
def test_no_new_offenders(rule):
    collect, known = RULES[rule]
    violations = collect()
    print(f"{rule}: {len(violations)} known offenders:\n  " + "\n  ".join(sorted(violations)))
    new = sorted(set(violations) - known)
    assert not new, f"new {rule} violations (fix them; do not add them to the list):\n" + \
        "\n".join(violations[k] for k in new)


@pytest.mark.parametrize("rule", list(RULES))
def test_known_offenders_still_offend(rule):
    collect, known = RULES[rule]
    fixed = sorted(known - set(collect()))
    assert not fixed, f"fixed, so remove them from the {rule} allow-list: {fixed}"


def test_every_module_has_a_layer():
    missing = sorted(name for name in modules() if layer(name) is None)
    assert not missing, f"add these modules to LAYERS in {Path(__file__).name}: {missing}"


# --------------------------------------------------------------------------- the checks


def test_layer_lookup_uses_the_longest_prefix():
    assert layer("data.images") == LAYERS["data"]
    assert layer("jobs.segment") == LAYERS["jobs"]
    assert layer("annotation.session") == LAYERS["annotation"]
    assert layer("nowhere") is None


def test_tarjan_finds_cycles_and_leaves_chains():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set(), "f": {"f"}}
    assert sorted(map(sorted, strongly_connected(graph))) == [["a", "b", "c"], ["d"], ["e"],
                                                               ["f"]]


def test_resolves_relative_and_submodule_imports():
    found = {(i.importer, i.target) for i in imports() if i.internal}
    # ``from napari_recist_seg import annotation as ann`` names the module itself.
    assert ("_widgets.annotator", "annotation") in found
    assert ("data.masks", "data.atomic") in found


def test_code_lines_skip_docstrings_comments_and_blanks():
    src = (
        "def f(x):\n"
        '    """Doc\n\n    more doc.\n    """\n'
        "    # a comment\n"
        "\n"
        "    y = (x +\n"
        "         1)\n"
        "    return y\n"
    )
    tree = ast.parse(src)
    code = _code_lines(src) - _docstring_lines(tree)
    fn = tree.body[0]
    assert len([n for n in code if fn.body[0].lineno <= n <= fn.body[-1].end_lineno]) == 3
