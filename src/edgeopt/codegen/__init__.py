"""int8 ONNX (QDQ) -> plain C99 with a static memory plan; build and run on the host or Cortex-M (QEMU).

>>> from edgeopt.codegen import export_c, build_and_run            # doctest: +SKIP
>>> exp = export_c("kws_int8.onnx", "build/kws", target="cortex-m4")  # doctest: +SKIP
>>> exp.arena_bytes, exp.constants_bytes                           # doctest: +SKIP
>>> res = build_and_run("build/kws", "cortex-m4", x_float)          # doctest: +SKIP
>>> res.outputs, res.flash_bytes, res.instructions                  # doctest: +SKIP
"""

from __future__ import annotations

from .api import CExport, bench_c_dir, c_budget_figures, build_and_run, export_c, quantize_input, reference_int8

__all__ = ["CExport", "c_budget_figures", "export_c", "build_and_run", "bench_c_dir", "quantize_input", "reference_int8"]
