"""Build the generated C for the host or a Cortex-M board and run it (natively or under QEMU)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ToolchainError

HOST_WARNINGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic-errors"]


@dataclass(frozen=True)
class Board:
    """A Cortex-M target emulated by QEMU."""

    name: str
    machine: str
    cpu_flags: tuple[str, ...]
    # The MPS2 timer runs at 25 MHz on both boards (measured: a 2,000,000-instruction loop reads
    # 50,000 ticks), so at -icount shift=0 (1 ns of virtual time per instruction) one tick is 40
    # instructions: counts are exact to within 40.
    timer_hz: int


BOARDS = {
    "cortex-m4": Board("cortex-m4", "mps2-an386", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"), 25_000_000),
    "cortex-m7": Board("cortex-m7", "mps2-an500", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"), 25_000_000),
}
TARGETS = ("host", *BOARDS)


@dataclass
class RunResult:
    """Outputs of a C build run over a batch of inputs, plus the build's size and cost figures."""

    outputs: np.ndarray                  # (samples, output_size), the model's quantized outputs
    target: str
    flash_bytes: int | None = None       # text + data from arm-none-eabi-size (Cortex-M only)
    ram_bytes: int | None = None         # data + bss (the arena, harness buffers, stack not included)
    instructions: int | None = None      # executed instructions of one inference (QEMU icount), not cycles
    size: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"target": self.target, "samples": int(len(self.outputs)), "flash_bytes": self.flash_bytes,
                "ram_bytes": self.ram_bytes, "instructions": self.instructions, "size": self.size}


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ConfigError(f"--target must be one of {', '.join(TARGETS)}; got {target!r}")
    return target


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"{name} is not installed; install it with: apt-get install {package}")
    return path


def _run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ToolchainError(f"{Path(cmd[0]).name} timed out after {timeout:.0f} s") from e
    if proc.returncode != 0:
        raise ToolchainError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:2000]}")
    return proc


def _runtime_file(name: str) -> Path:
    return Path(str(resources.files("edgeopt.codegen").joinpath("runtime", name)))


def build_host(src_dir: Path, build_dir: Path, *, sanitize: bool = False) -> Path:
    """Compile model + kernels + harness with the host gcc, warnings as errors."""
    gcc = _tool("gcc", "gcc")
    exe = build_dir / ("run_asan" if sanitize else "run")
    flags = [*HOST_WARNINGS, "-O2", "-ffp-contract=off"]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1"]
    sources = [src_dir / "model.c", src_dir / "edgeopt_kernels.c", _runtime_file("edgeopt_main.c")]
    _run([gcc, *flags, "-I", str(src_dir), *map(str, sources), "-o", str(exe), "-lm"])
    return exe


def build_cortex_m(src_dir: Path, build_dir: Path, target: str) -> tuple[Path, dict]:
    """Cross-compile for a Cortex-M board; returns the ELF and arm-none-eabi-size's figures."""
    board = BOARDS[target]
    gcc = _tool("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi")
    size_tool = _tool("arm-none-eabi-size", "binutils-arm-none-eabi")
    elf = build_dir / f"model_{target}.elf"
    flags = [*board.cpu_flags, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-ffp-contract=off",
             "-ffunction-sections", "-fdata-sections", "-DEO_SEMIHOSTING", "-nostartfiles",
             "-Wl,--gc-sections", f"-T{_runtime_file('cortex_m.ld')}"]
    sources = [src_dir / "model.c", src_dir / "edgeopt_kernels.c", _runtime_file("edgeopt_main.c"), _runtime_file("startup_cm.c")]
    _run([gcc, *flags, "-I", str(src_dir), *map(str, sources), "-o", str(elf), "-lm", "-lc", "-lgcc"])
    out = _run([size_tool, "-A", "-d", str(elf)]).stdout
    sections = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.\S+)\s+(\d+)\s+\d+", out, re.M)}
    text = sections.get(".text", 0) + sections.get(".ARM.exidx", 0)
    data, bss = sections.get(".data", 0), sections.get(".bss", 0)
    return elf, {"text": text, "data": data, "bss": bss, "flash_bytes": text + data, "ram_bytes": data + bss}


def _model_sizes(src_dir: Path) -> tuple[int, int]:
    text = (src_dir / "model.h").read_text()
    n_in = int(re.search(r"#define MODEL_INPUT_SIZE (\d+)", text).group(1))
    n_out = int(re.search(r"#define MODEL_OUTPUT_SIZE (\d+)", text).group(1))
    return n_in, n_out


def run_c(src_dir: str | os.PathLike, target: str, inputs: np.ndarray, *, sanitize: bool = False,
          timeout: float = 1800) -> RunResult:
    """Build the exported C in ``src_dir`` for ``target`` and run it on quantized ``inputs`` (samples first)."""
    check_target(target)
    src_dir = Path(src_dir)
    n_in, n_out = _model_sizes(src_dir)
    flat = np.ascontiguousarray(inputs).reshape(len(inputs), -1)
    if flat.shape[1] != n_in:
        raise ConfigError(f"inputs have {flat.shape[1]} values per sample; the model takes {n_in}")
    signed = "EO_ACT_SIGNED 1" in (src_dir / "model_config.h").read_text()
    dtype = np.int8 if signed else np.uint8
    with tempfile.TemporaryDirectory(prefix="edgeopt-c-") as tmp:
        work = Path(tmp)
        (work / "input.bin").write_bytes(flat.astype(dtype).tobytes())
        if target == "host":
            exe = build_host(src_dir, work, sanitize=sanitize)
            _run([str(exe), "input.bin", "output.bin"], cwd=work, timeout=timeout)
            result = RunResult(np.empty(0), target)
        else:
            elf, size = build_cortex_m(src_dir, work, target)
            qemu = _tool("qemu-system-arm", "qemu-system-arm")
            board = BOARDS[target]
            proc = _run([qemu, "-M", board.machine, "-nographic", "-monitor", "none", "-serial", "none",
                         "-icount", "shift=0,sleep=off", "-chardev", "file,id=semihost,path=console.txt",
                         "-semihosting-config", "enable=on,target=native,chardev=semihost",
                         "-kernel", str(elf)], cwd=work, timeout=timeout)
            console = (work / "console.txt").read_text(errors="replace") if (work / "console.txt").exists() else ""
            m = re.search(r"timer_ticks=(\d+)", console)
            if m is None:
                raise ToolchainError(f"the Cortex-M run printed no instruction count: {(console + proc.stdout)[-500:]!r}")
            instructions = int(m.group(1)) * (1_000_000_000 // board.timer_hz)
            result = RunResult(np.empty(0), target, size["flash_bytes"], size["ram_bytes"], instructions, size)
        raw = np.frombuffer((work / "output.bin").read_bytes(), dtype=dtype)
    if raw.size != len(flat) * n_out:
        raise ToolchainError(f"the C program wrote {raw.size} output values; expected {len(flat) * n_out}")
    result.outputs = raw.reshape(len(flat), n_out).copy()
    return result
