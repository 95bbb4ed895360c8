"""Reference int8 QDQ quantization used until edgeopt's own PTQ pass lands.

Kept in one function so it can be swapped for ``edgeopt``'s pass without touching the generator:
the generator only needs *some* int8 QDQ ONNX graph.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def quantize_qdq(model_path: str | os.PathLike, calib_inputs: np.ndarray, *, activation: str = "int8",
                 out_path: str | os.PathLike | None = None) -> bytes:
    """Quantize an fp32 ONNX model to int8 QDQ with ONNX Runtime's static quantizer.

    Weights are per-channel QInt8; activations are QInt8 (``activation="int8"``) or QUInt8
    (``"uint8"``). ``calib_inputs`` is an array of calibration samples (first axis = sample).
    Returns the quantized model's bytes (and writes them to ``out_path`` if given).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    act_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activation]
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    calib = np.asarray(calib_inputs, dtype=np.float32)

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    with tempfile.TemporaryDirectory(prefix="edgeopt-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "q.onnx"
        quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=act_type)
        data = out.read_bytes()
    if out_path is not None:
        from .._io import write_bytes_atomic

        write_bytes_atomic(out_path, data)
    return data


def log_mel_frames(clips: np.ndarray, sr: int = 16000, n_fft: int = 1024, hop: int = 512, n_mels: int = 128) -> np.ndarray:
    """MLPerf Tiny AD features (5 consecutive 128-bin log-mel frames, 10*log10 power) from raw clips."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)
    pts = 700.0 * (10 ** (np.linspace(mel(0), mel(sr / 2), n_mels + 2) / 2595.0) - 1)
    bins = np.floor((n_fft + 1) * pts / sr).astype(int)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(1, n_mels + 1):
        lo, c, hi = bins[m - 1], bins[m], bins[m + 1]
        fb[m - 1, lo:c] = (np.arange(lo, c) - lo) / max(c - lo, 1)
        fb[m - 1, c:hi] = (hi - np.arange(c, hi)) / max(hi - c, 1)
    window = np.hanning(n_fft)
    rows = []
    for clip in clips.astype(np.float32) / 32768.0:
        frames = np.stack([clip[i : i + n_fft] * window for i in range(0, len(clip) - n_fft, hop)])
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        logmel = 10.0 * np.log10(power @ fb.T + 1e-10)
        for i in range(0, len(logmel) - 5, 5):
            rows.append(logmel[i : i + 5].reshape(-1))
    return np.asarray(rows, np.float32)


def mlperf_calibration(task: str, data_root: str | os.PathLike) -> np.ndarray:
    """Calibration rows 0-499 for the MLPerf Tiny models from the shared data (see DATA.md).

    IC: CIFAR-10 test rows; KWS: Speech Commands MFCC rows. VWW and AD ship no data: VWW uses the
    CIFAR rows upsampled to 96x96 (real photos, RGB/255); AD uses log-mel frames of the 120 raw
    Speech Commands clips (real audio, not machine sounds).
    """
    DATA = Path(data_root)
    if task == "ic":
        return np.load(DATA / "datasets/cifar10_test_first1000.npz")["x"][:500].astype(np.float32)
    if task == "kws":
        return np.load(DATA / "datasets/speech_commands_test_v0.02_mlperf_mfcc.npz")["x"][:500]
    if task == "vww":
        x = np.load(DATA / "datasets/cifar10_test_first1000.npz")["x"][:500].astype(np.float32) / 255.0
        return np.repeat(np.repeat(x, 3, axis=1), 3, axis=2)
    clips = np.load(DATA / "datasets/speech_commands_test_v0.02_10perclass_int16.npz")["audio"]
    return log_mel_frames(clips)[:500]
