"""Target: a frozen description of a device, parsed from a short name or a YAML file.

A target says which runtime runs the model (ONNX Runtime or generated C), which data types and
operators it supports, its RAM and storage budgets, how many threads to use, and two models for
what cannot be measured on this machine:

- a **cost model** (effective MAC throughput per data type, memory bandwidth) giving a latency
  that is always labelled ``"estimated"``;
- an **energy model** (picojoules per operation and per 32-bit memory access, from Horowitz,
  ISSCC 2014, 45 nm) giving an energy per inference, always labelled as an estimate with its source.

The ``host`` target measures latency on this machine instead of estimating it.

>>> from edgeopt.target import Target
>>> t = Target.parse("cortex-m7")
>>> t.ram_bytes, t.storage_bytes
(524288, 2097152)
>>> est = t.estimate_latency({"int8": 2_000_000}, bytes_moved=60_000)
>>> est.method
'estimated'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

TARGETS_DIR = Path(__file__).with_name("targets")

# Canonical data-type names; the aliases are what ONNX / numpy / users write.
_DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "fp32": "fp32", "f32": "fp32",
    "float16": "fp16", "half": "fp16", "fp16": "fp16", "f16": "fp16",
    "bfloat16": "bf16", "bf16": "bf16",
    "int8": "int8", "uint8": "int8", "i8": "int8", "u8": "int8", "qint8": "int8", "quint8": "int8",
    "int4": "int4", "uint4": "int4",
    "int16": "int16", "int32": "int32",
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def canonical_dtype(name: str) -> str:
    """'float32' -> 'fp32', 'uint8' -> 'int8'; raises ConfigError for an unknown type."""
    key = str(name).strip().lower()
    if key not in _DTYPE_ALIASES:
        raise ConfigError(f"unknown data type {name!r}; known: {', '.join(sorted(set(_DTYPE_ALIASES.values())))}")
    return _DTYPE_ALIASES[key]


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like '256 KiB', '2MiB', '1.5 MB' (KiB = 1024, kB = 1000)."""
    if isinstance(value, bool):
        raise ValueError(f"a size must be bytes or a string like '256 KiB'; got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative; got {value}")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"a size must be bytes or a string like '256 KiB' or '2 MiB'; got {value!r}")
    number, unit = match.groups()
    return int(round(float(number) * _SIZE_UNITS[(unit or "b").lower()]))


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CostModel(_Strict):
    """Effective (not peak) throughput: what a tuned runtime sustains on this device."""

    macs_per_second: dict[str, float] = Field(description="effective multiply-accumulates per second, per data type")
    memory_bandwidth_bytes_per_s: float = Field(gt=0)
    #: Out-of-order cores with caches overlap loads with arithmetic (roofline: max); in-order
    #: microcontrollers mostly do not (sum).
    overlap_compute_and_memory: bool = True
    notes: str = ""

    @field_validator("macs_per_second")
    @classmethod
    def _dtypes(cls, value: dict[str, float]) -> dict[str, float]:
        out = {}
        for k, v in value.items():
            if k.lower() not in _DTYPE_ALIASES:
                raise ValueError(f"unknown data type {k!r}; known: {', '.join(sorted(set(_DTYPE_ALIASES.values())))}")
            if not v > 0:
                raise ValueError(f"throughput for {k!r} must be > 0; got {v}")
            out[_DTYPE_ALIASES[k.lower()]] = float(v)
        return out


class EnergyModel(_Strict):
    """Energy per operation in picojoules. Defaults: Horowitz, ISSCC 2014 (45 nm, 0.9 V)."""

    int8_add_pj: float = 0.03
    int8_mult_pj: float = 0.2
    int32_add_pj: float = 0.1
    int32_mult_pj: float = 3.1
    fp16_add_pj: float = 0.4
    fp16_mult_pj: float = 1.1
    fp32_add_pj: float = 0.9
    fp32_mult_pj: float = 3.7
    sram_read_32bit_pj: float = 5.0     # 8 KB SRAM
    dram_read_32bit_pj: float = 640.0
    #: where the bytes a layer moves come from: on-chip SRAM (microcontrollers) or DRAM
    memory: Literal["sram", "dram"] = "dram"
    source: str = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014; 45 nm process"

    def mac_pj(self, dtype: str) -> float:
        """Energy of one multiply-accumulate. Integer products accumulate in 32 bits (why int8 uses int32 add)."""
        dtype = canonical_dtype(dtype)
        table = {
            "int8": self.int8_mult_pj + self.int32_add_pj,
            "int4": self.int8_mult_pj + self.int32_add_pj,   # no 4-bit figure in the source: int8 is the upper bound
            "int16": self.int8_mult_pj * 4 + self.int32_add_pj,  # multiplier energy grows ~quadratically with width
            "int32": self.int32_mult_pj + self.int32_add_pj,
            "fp16": self.fp16_mult_pj + self.fp16_add_pj,
            "bf16": self.fp16_mult_pj + self.fp16_add_pj,
            "fp32": self.fp32_mult_pj + self.fp32_add_pj,
        }
        return table[dtype]

    @property
    def memory_pj_per_32bit(self) -> float:
        return self.sram_read_32bit_pj if self.memory == "sram" else self.dram_read_32bit_pj


@dataclass(frozen=True)
class Estimate:
    """A figure that was not measured: value, unit, and how it was obtained."""

    value: float
    unit: str
    method: str           # always "estimated"
    basis: str

    def to_dict(self) -> dict:
        return {"value": self.value, "unit": self.unit, "method": self.method, "basis": self.basis}

    def __str__(self) -> str:
        return f"{self.value:.4g} {self.unit} ({self.method}: {self.basis})"


class Target(_Strict):
    """A device: runtime, data types, budgets, threads, cost and energy models. Frozen.

    Parse one with :meth:`Target.parse` from a bundled name (``edgeopt targets`` lists them) or a
    YAML file path.
    """

    name: str
    description: str = ""
    runtime: Literal["onnxruntime", "c"]
    #: the host target runs candidates here and measures latency; all others estimate it
    measures_latency: bool = False
    dtypes: tuple[str, ...] = Field(min_length=1)
    #: ONNX operator types the runtime supports; None means "whatever the runtime loads"
    ops: tuple[str, ...] | None = None
    ram_bytes: int | None = None
    storage_bytes: int | None = None
    threads: int = Field(default=1, ge=1)
    #: the core the C generator builds for (runtime "c"): flash/RAM budgets are checked on the
    #: firmware linked for it, not estimated
    cpu: Literal["cortex-m4", "cortex-m7"] | None = None
    #: parameters the search must not vary on this target (``step__param``: value), and pass
    #: families it must always use, restricted to the listed passes
    search_fixed: dict[str, Any] = Field(default_factory=dict)
    search_required: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    cost: CostModel
    energy: EnergyModel = EnergyModel()
    source: str | None = None   # where this profile was read from

    @field_validator("ram_bytes", "storage_bytes", mode="before")
    @classmethod
    def _size(cls, value):
        return None if value is None else parse_size(value)

    @field_validator("dtypes", mode="before")
    @classmethod
    def _dtype_list(cls, value):
        if isinstance(value, str):
            value = [value]
        out = []
        for v in value:
            if str(v).lower() not in _DTYPE_ALIASES:
                raise ValueError(f"unknown data type {v!r}; known: {', '.join(sorted(set(_DTYPE_ALIASES.values())))}")
            out.append(_DTYPE_ALIASES[str(v).lower()])
        return tuple(dict.fromkeys(out))

    @model_validator(mode="after")
    def _throughput_for_every_dtype(self):
        missing = [d for d in self.dtypes if d not in self.cost.macs_per_second]
        if missing:
            raise ValueError(f"cost.macs_per_second has no figure for supported dtype(s) {missing}")
        return self

    # -- parsing ----------------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: "str | os.PathLike | Target | Mapping") -> "Target":
        """A target from a bundled name ('cortex-m7'), a YAML file path, a mapping, or a Target.

        Bad YAML raises ConfigError naming the field and what is wrong.
        """
        if isinstance(spec, Target):
            return spec
        if isinstance(spec, Mapping):
            return cls._validate(dict(spec), origin="mapping")
        text = str(spec)
        path = Path(text)
        if text.lower().endswith((".yaml", ".yml")) or os.sep in text:
            if not path.is_file():
                raise ConfigError(f"target file {text!r} does not exist")
            return cls._from_file(path)
        bundled = bundled_target_files()
        if text not in bundled:
            raise ConfigError(f"unknown target {text!r}; bundled targets: {', '.join(bundled)} (or a path to a YAML file)")
        return cls._from_file(bundled[text])

    @classmethod
    def _from_file(cls, path: Path) -> "Target":
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"target file {str(path)!r} is not valid YAML: {e}") from e
        if not isinstance(data, Mapping):
            raise ConfigError(f"target file {str(path)!r} must hold a mapping (name:, runtime:, dtypes:, cost:, ...)")
        data = dict(data)
        data.setdefault("name", path.stem)
        data["source"] = str(path)
        return cls._validate(data, origin=str(path))

    @classmethod
    def _validate(cls, data: dict, *, origin: str) -> "Target":
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = []
            for err in e.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(top level)"
                got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], Mapping) else ""
                problems.append(f"{field}: {err['msg']}{got}")
            raise ConfigError(f"target {origin!r} is invalid: " + "; ".join(problems)) from None

    # -- budgets ----------------------------------------------------------------------------------
    def supports(self, dtype: str) -> bool:
        return canonical_dtype(dtype) in self.dtypes

    def headroom(self, *, ram_bytes: float | None = None, storage_bytes: float | None = None) -> dict[str, float | None]:
        """Budget minus use, in bytes (negative: over budget); None where the target sets no budget."""
        return {
            "ram": None if self.ram_bytes is None or ram_bytes is None else self.ram_bytes - ram_bytes,
            "storage": None if self.storage_bytes is None or storage_bytes is None else self.storage_bytes - storage_bytes,
        }

    # -- estimates --------------------------------------------------------------------------------
    def estimate_latency(self, macs_by_dtype: Mapping[str, float], bytes_moved: float) -> Estimate:
        """Latency in ms from the cost model: compute time per dtype and memory time, combined
        as a roofline (max) on cores that overlap them, or summed on in-order microcontrollers."""
        compute_s = 0.0
        for dtype, macs in macs_by_dtype.items():
            d = canonical_dtype(dtype)
            if d not in self.cost.macs_per_second:
                raise ConfigError(f"target {self.name!r} has no throughput figure for {d} "
                                  f"(it supports {', '.join(self.dtypes)}); convert the model or add cost.macs_per_second.{d}")
            compute_s += float(macs) / self.cost.macs_per_second[d]
        memory_s = float(bytes_moved) / self.cost.memory_bandwidth_bytes_per_s
        total = max(compute_s, memory_s) if self.cost.overlap_compute_and_memory else compute_s + memory_s
        how = "max" if self.cost.overlap_compute_and_memory else "sum"
        return Estimate(total * 1e3, "ms", "estimated",
                        f"cost model of {self.name}: {how}(MACs / effective MAC rate, bytes / {format_bytes(self.cost.memory_bandwidth_bytes_per_s)}/s)")

    def estimate_energy(self, macs_by_dtype: Mapping[str, float], bytes_moved: float) -> Estimate:
        """Energy per inference in microjoules: every MAC at its dtype's cost, plus every 32-bit
        word moved at the cost of this target's memory level. An estimate (see ``energy.source``)."""
        pj = sum(float(m) * self.energy.mac_pj(d) for d, m in macs_by_dtype.items())
        pj += float(bytes_moved) / 4 * self.energy.memory_pj_per_32bit
        return Estimate(pj * 1e-6, "uJ", "estimated",
                        f"{self.energy.memory.upper()} access + MAC energy from {self.energy.source}")

    def summary(self) -> dict:
        return {
            "name": self.name, "description": self.description, "runtime": self.runtime,
            "measures_latency": self.measures_latency, "dtypes": list(self.dtypes),
            "ram_bytes": self.ram_bytes, "storage_bytes": self.storage_bytes, "threads": self.threads,
            "macs_per_second": dict(self.cost.macs_per_second),
            "memory_bandwidth_bytes_per_s": self.cost.memory_bandwidth_bytes_per_s,
            "energy_memory": self.energy.memory, "energy_source": self.energy.source, "source": self.source,
        }

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def bundled_target_files() -> dict[str, Path]:
    """Bundled profile name -> YAML path."""
    return {p.stem: p for p in sorted(TARGETS_DIR.glob("*.yaml"))}


def bundled_targets() -> list[Target]:
    return [Target.parse(name) for name in bundled_target_files()]
