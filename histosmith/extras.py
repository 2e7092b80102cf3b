"""Optional dependencies: which extra of the distribution installs which module, and the one-line error
a command gives when it needs an extra that is not installed.

The base install is the lean runtime (``hs-generate`` on ONNX Runtime). Everything else is an extra of
``pyproject.toml``; keep the table below in step with it (tests/test_extras.py checks both directions).
"""

from __future__ import annotations

import importlib.util

from histosmith.errors import HistoSmithError

# extra -> the top-level modules it provides (import names, not distribution names)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("torch", "matplotlib", "pyarrow", "shapely", "cv2", "scipy", "skimage"),
    "export": ("onnx", "polygraphy", "onnx_graphsurgeon", "onnxconverter_common"),
    "gpu": (),  # onnxruntime-gpu replaces onnxruntime under the same import name
    "trt": ("tensorrt", "cuda"),
    "serve": ("pytriton", "tritonclient"),
    "ray": ("ray",),
    "openvino": ("openvino",),
}

MODULE_EXTRA: dict[str, str] = {module: extra for extra, modules in EXTRA_MODULES.items() for module in modules}


def install_hint(extras: tuple[str, ...] | list[str]) -> str:
    """``pip install 'histosmith[a,b]'`` for the given extras."""
    return f"pip install 'histosmith[{','.join(extras)}]'"


def available(module: str) -> bool:
    """Whether top-level ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [m for m in EXTRA_MODULES[extra] if not available(m)]


def require(what: str, *extras: str) -> None:
    """Raise the standard error if any module of ``extras`` is missing; ``what`` names the feature."""
    missing = [m for extra in extras for m in missing_modules(extra)]
    if missing:
        raise HistoSmithError(f"{what} needs the [{','.join(extras)}] extra ({', '.join(missing)} not installed): "
                              f"{install_hint(extras)}")


def error_for_missing_module(exc: ModuleNotFoundError) -> HistoSmithError | None:
    """Turn an ImportError of an optional module into the standard message; None for anything else."""
    top = (exc.name or "").split(".")[0]
    extra = MODULE_EXTRA.get(top)
    if extra is None:
        return None
    return HistoSmithError(f"{top} is not installed; it comes with the [{extra}] extra: {install_hint([extra])}")
