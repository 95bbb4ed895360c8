"""Building blocks shared by the quantization passes: calibration data, graph compaction,
per-layer sensitivity, cross-layer equalization and bias correction.

Kept out of ``edgeopt/passes/`` because they are not passes themselves (the registry scans that
package for one technique per module).
"""
