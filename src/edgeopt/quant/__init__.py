"""Building blocks shared by the quantization passes: calibration data, graph compaction,
per-layer sensitivity, cross-layer equalization and bias correction.

Kept out of ``edgeopt/passes/`` because they are not passes themselves (the registry scans that
package for one technique per module).
"""

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet():
    """Silence ONNX Runtime's quantization tools, which print progress to stdout (it would corrupt
    ``--json`` output), log at INFO level and let numpy warn about infinite ranges (an attention
    mask's -inf; the candidate's measured accuracy is what reports such damage)."""
    loggers = [logging.getLogger(n) for n in ("onnxruntime", "onnxruntime.quantization", "root", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
