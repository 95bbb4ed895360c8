"""edgeopt: make trained neural networks small and fast enough for edge devices, and prove they still work.

>>> import edgeopt                                                        # doctest: +SKIP
>>> model = edgeopt.load("resnet8.onnx")                                  # doctest: +SKIP
>>> print(edgeopt.profile(model).table())                                 # doctest: +SKIP

Heavy modules are imported on first use, so ``import edgeopt`` stays cheap. Modules are named
unlike the functions they export (``evaluation.evaluate``) so that importing a submodule never
shadows a public function.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it; resolved lazily (PEP 562)
_LAZY = {
    "load": "model",
    "ModelHandle": "model",
    "TensorSpec": "model",
    "load_data": "data",
    "Dataset": "data",
    "Preprocess": "data",
    "evaluate": "evaluation",
    "profile": "profiling",
    "benchmark": "bench",
    "optimize": "optimizer",
    "Recipe": "recipe",
    "Target": "target",
    "export_c": "codegen",
}

__all__ = sorted(_LAZY) + ["errors", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if name == "errors":
        return importlib.import_module(".errors", __name__)
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")
