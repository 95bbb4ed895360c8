"""Emit C99 source for a lowered int8 model: weights in const arrays, activations in one static arena."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .lower import LoweredModel, Op, QTensor, float_to_mant_exp
from .planner import Buffer, MemoryPlan, plan_memory

RUNTIME_FILES = ("edgeopt_kernels.c", "edgeopt_kernels.h")
_INPLACE_KINDS = {"add", "mul", "lut", "softmax"}  # elementwise: output i depends only on inputs at i (softmax: row-wise, reads before writing)


@dataclass
class Generated:
    files: dict[str, str]       # file name -> text
    plan: MemoryPlan
    tensor_offsets: dict[str, int]
    flash_const_bytes: int
    lowered: LoweredModel


def _f32(v) -> str:
    """An exact C99 float literal (hex float)."""
    v = float(np.float32(v))
    if math.isinf(v) or math.isnan(v):
        raise ValueError(f"non-finite constant {v}")
    return f"{v.hex()}f"


def _array(ctype: str, name: str, values, per_line: int = 24) -> str:
    vals = [str(int(v)) for v in np.asarray(values).reshape(-1).tolist()]
    lines = [", ".join(vals[i : i + per_line]) for i in range(0, len(vals), per_line)]
    body = ",\n    ".join(lines) if lines else "0"
    return f"static const {ctype} {name}[{max(len(vals), 1)}] = {{\n    {body}\n}};\n"


def _float_array(name: str, values, per_line: int = 6) -> str:
    vals = [_f32(v) for v in np.asarray(values, np.float32).reshape(-1)]
    lines = [", ".join(vals[i : i + per_line]) for i in range(0, len(vals), per_line)]
    return f"static const float {name}[{len(vals)}] = {{\n    " + ",\n    ".join(lines) + "\n};\n"


def _fma32(a, b, c) -> np.float32:
    # the product of two float32 values is exact in float64; one rounding to float32 after the add
    return np.float32(float(np.float32(a)) * float(np.float32(b)) + float(np.float32(c)))


def add_constants(a: QTensor, b: QTensor, y: QTensor) -> tuple[np.float32, np.float32, np.float32]:
    """Ratios and fixed part of ORT's QLinearAdd: y = fma(a, ra, fma(b, rb, zc - (ra*za + rb*zb)))."""
    ra = np.float32(a.scale / y.scale)
    rb = np.float32(b.scale / y.scale)
    # ORT builds this with FMA contraction enabled: ra*za + rb*zb -> fma(ra, za, rb*zb)
    inner = _fma32(ra, np.float32(a.zero_point), np.float32(rb * np.float32(b.zero_point)))
    fixed = np.float32(np.float32(y.zero_point) - inner)
    return ra, rb, fixed


def softmax_table(x_scale: np.float32, depth: int) -> np.ndarray:
    """ORT's QLinearSoftmax exp table, re-indexed so that entry 255 is the row maximum."""
    fmax = np.float32(np.finfo(np.float32).max)
    bit_shift = math.log(float(np.float32(fmax / np.float32(depth))))
    bit_shift = max(0.0, bit_shift - 5.0) / float(x_scale)
    i = np.arange(256, dtype=np.float64)
    return np.exp((i - 255 + bit_shift) * float(x_scale)).astype(np.float32)


def build_buffers(model: LoweredModel) -> tuple[list[Buffer], dict[str, str]]:
    """Arena buffers with lifetimes (op indices), and tensor -> buffer (aliases and in-place ops share)."""
    const_tensors = {n for op in model.ops for n, c in zip(op.inputs, op.attrs.get("consts", [None] * len(op.inputs))) if c is not None}
    owner: dict[str, str] = {}
    buffers: dict[str, Buffer] = {}
    last_use: dict[str, int] = {}
    for idx, op in enumerate(model.ops):
        for name in op.inputs:
            last_use[name] = idx

    def root(name: str) -> str:
        while model.tensors[name].alias_of is not None:
            name = model.tensors[name].alias_of
        return owner.get(name, name)

    inp = model.input
    buffers[inp.name] = Buffer(inp.name, inp.size, 0, 0, tensors=[inp.name])
    owner[inp.name] = inp.name
    for idx, op in enumerate(model.ops):
        for name in op.inputs:
            if name in const_tensors:
                continue
            buffers[root(name)].last = max(buffers[root(name)].last, idx)
        out = model.tensors[op.output]
        if out.alias_of is not None:
            r = root(out.alias_of)
            owner[out.name] = r
            buffers[r].tensors.append(out.name)
            buffers[r].last = max(buffers[r].last, idx)
            continue
        target = None
        candidates = op.inputs if op.kind in _INPLACE_KINDS else (op.inputs[1:] if "add" in op.attrs else [])
        if candidates:
            for name in candidates:
                if name in const_tensors:
                    continue
                r = root(name)
                # in place only if no later op reads the input (through any alias of its buffer)
                readers = [t for t in buffers[r].tensors if last_use.get(t, -1) > idx]
                if model.tensors[name].size == out.size and not readers and r != model.output_name:
                    target = r
                    break
        if target is not None:
            owner[out.name] = target
            buffers[target].tensors.append(out.name)
            buffers[target].last = max(buffers[target].last, idx)
        else:
            owner[out.name] = out.name
            buffers[out.name] = Buffer(out.name, out.size, idx, idx, tensors=[out.name])
    out_root = root(model.output_name)
    buffers[out_root].last = len(model.ops) - 1 if model.ops else 0
    return list(buffers.values()), owner


def generate(model: LoweredModel, *, model_name: str = "model") -> Generated:
    buffers, owner = build_buffers(model)
    plan = plan_memory(buffers)
    offsets = {b.name: b.offset for b in plan.buffers}

    def root(name: str) -> str:
        while model.tensors[name].alias_of is not None:
            name = model.tensors[name].alias_of
        return owner.get(name, name)

    tensor_offsets = {t: offsets[root(t)] for t in model.tensors if root(t) in offsets}
    act = "int8_t" if model.signed else "uint8_t"
    qmin, qmax = (-128, 127) if model.signed else (0, 255)
    consts: list[str] = []
    body: list[str] = []
    const_bytes = 0

    def ptr(name: str) -> str:
        return f"(arena.bytes + {tensor_offsets[name]})"

    def cptr(name: str) -> str:
        return f"((eo_act_t *)(arena.bytes + {tensor_offsets[name]}))"

    def shape3(shape) -> str:
        c, h, w = (list(shape) + [1, 1, 1])[1:4] if len(shape) == 4 else (int(np.prod(shape)), 1, 1)
        return f"(eo_shape3){{{c}, {h}, {w}}}"

    def weight_constants(tag: str, w, a) -> int:
        """Weights, int32 biases and per-channel requantization (mantissa, exponent) of a conv or
        gemm as const arrays; returns their bytes."""
        mant, expo = float_to_mant_exp(a["requant"])
        consts.append(_array("int8_t", f"{tag}_w", w))
        consts.append(_array("int32_t", f"{tag}_b", a["bias"]))
        consts.append(_array("int32_t", f"{tag}_m", mant))
        consts.append(_array("int8_t", f"{tag}_e", expo))
        return w.size + 4 * len(a["bias"]) + 5 * len(mant)

    for idx, op in enumerate(model.ops):
        y = model.tensors[op.output]
        a = op.attrs
        tag = f"op{idx}"
        body.append(f"    /* {idx}: {op.kind} {op.name} -> {list(y.shape)} */")
        if op.kind == "conv":
            x = model.tensors[op.inputs[0]]
            w = a["weight"]
            const_bytes += weight_constants(tag, w, a)
            epilogue = "0"
            if "add" in a:
                fa = a["add"]
                conv_out = model.tensors[fa["conv_output"]]
                other = model.tensors[fa["other"]]
                ta, tb = (conv_out, other) if fa["conv_is_a"] else (other, conv_out)
                ra, rb, fixed = add_constants(ta, tb, y)
                body.append(
                    f"    {{ static const eo_add_epilogue add = {{0, {int(fa['conv_is_a'])}, {_f32(ra)}, {_f32(rb)}, {_f32(fixed)}, "
                    f"{fa['qmin']}, {fa['qmax']}}};\n      eo_add_epilogue e = add; e.other = {cptr(other.name)};")
                epilogue = "&e"
                y_q = conv_out
            else:
                y_q = y
            body.append(
                f"    eo_conv({cptr(x.name)}, {shape3(x.shape)}, {x.zero_point}, {tag}_w, {tag}_b, {w.shape[2]}, {w.shape[3]}, "
                f"{a['group']}, {a['strides'][0]}, {a['strides'][1]}, {a['pads'][0]}, {a['pads'][1]}, {cptr(y.name)}, "
                f"{shape3(y.shape)}, {tag}_m, {tag}_e, {y_q.zero_point}, {a['qmin']}, {a['qmax']}, {epilogue});" + (" }" if "add" in a else ""))
        elif op.kind == "gemm":
            x = model.tensors[op.inputs[0]]
            w = a["weight"]
            const_bytes += weight_constants(tag, w, a)
            body.append(
                f"    eo_gemm({cptr(x.name)}, {a['rows']}, {a['k']}, {a['n']}, {x.zero_point}, {tag}_w, {tag}_b, {cptr(y.name)}, "
                f"{tag}_m, {tag}_e, {y.zero_point}, {a['qmin']}, {a['qmax']});")
        elif op.kind in ("add", "mul"):
            ta, tb = (model.tensors[n] for n in op.inputs)
            ptrs = []
            for j, (t, c) in enumerate(zip((ta, tb), a["consts"])):
                if c is None:
                    ptrs.append(cptr(t.name))
                else:
                    consts.append(_array(act, f"{tag}_c{j}", c))
                    const_bytes += c.size
                    ptrs.append(f"{tag}_c{j}")
            mode = {"same": 0, "b_tail": 1, "b_scalar": 2, "a_scalar": 3, "a_tail": 4}[a["broadcast"]]
            blen = tb.size if mode in (1, 2) else ta.size
            if op.kind == "add":
                ra, rb, fixed = add_constants(ta, tb, y)
                body.append(
                    f"    eo_add({ptrs[0]}, {ptrs[1]}, {cptr(y.name)}, {y.size}, {mode}, {blen}, {_f32(ra)}, {_f32(rb)}, "
                    f"{_f32(fixed)}, {a['qmin']}, {a['qmax']});")
            else:
                ratio = np.float32(np.float32(ta.scale * tb.scale) / y.scale)
                mant, expo = float_to_mant_exp(np.array([ratio]))
                body.append(
                    f"    eo_mul({ptrs[0]}, {ptrs[1]}, {cptr(y.name)}, {y.size}, {mode}, {blen}, {ta.zero_point}, {tb.zero_point}, "
                    f"{int(mant[0])}, {int(expo[0])}, {y.zero_point}, {a['qmin']}, {a['qmax']});")
        elif op.kind == "avgpool" and list(a["kernel"]) == list(model.tensors[op.inputs[0]].shape[2:]) and not any(a["pads"]):
            # ORT runs a window covering the whole image as a global average pool (integer sum)
            x = model.tensors[op.inputs[0]]
            hw = int(np.prod(x.shape[2:]))
            scale = np.float32(x.scale / np.float32(y.scale * np.float32(hw)))
            mant, expo = float_to_mant_exp(np.array([scale]))
            body.append(
                f"    eo_global_avgpool({cptr(x.name)}, {x.shape[1]}, {hw}, {x.zero_point}, {int(mant[0])}, {int(expo[0])}, "
                f"{cptr(y.name)}, {y.zero_point}, {a['qmin']}, {a['qmax']});")
        elif op.kind == "avgpool":
            x = model.tensors[op.inputs[0]]
            body.append(
                f"    eo_avgpool({cptr(x.name)}, {shape3(x.shape)}, {_f32(x.scale)}, {x.zero_point}, {a['kernel'][0]}, {a['kernel'][1]}, "
                f"{a['strides'][0]}, {a['strides'][1]}, {a['pads'][0]}, {a['pads'][1]}, {a['count_include_pad']}, {cptr(y.name)}, "
                f"{shape3(y.shape)}, {_f32(y.scale)}, {y.zero_point}, {a['qmin']}, {a['qmax']});")
        elif op.kind == "maxpool":
            x = model.tensors[op.inputs[0]]
            body.append(
                f"    eo_maxpool({cptr(x.name)}, {shape3(x.shape)}, {a['kernel'][0]}, {a['kernel'][1]}, {a['strides'][0]}, "
                f"{a['strides'][1]}, {a['pads'][0]}, {a['pads'][1]}, {cptr(y.name)}, {shape3(y.shape)});")
        elif op.kind == "softmax":
            x = model.tensors[op.inputs[0]]
            consts.append(_float_array(f"{tag}_exp", softmax_table(x.scale, a["depth"])))
            const_bytes += 256 * 4
            y_scale_inv = np.float32(math.floor(np.float32(np.float32(1.0) / y.scale)))
            body.append(
                f"    eo_softmax({cptr(x.name)}, {cptr(y.name)}, {x.size // a['depth']}, {a['depth']}, {tag}_exp, "
                f"{_f32(y_scale_inv)}, {y.zero_point}, {a['qmin']}, {a['qmax']});")
        elif op.kind == "lut":
            x = model.tensors[op.inputs[0]]
            consts.append(_array(act, f"{tag}_lut", a["table"]))
            const_bytes += 256
            body.append(f"    eo_lut({cptr(x.name)}, {cptr(y.name)}, {y.size}, {tag}_lut);")
        elif op.kind == "transpose":
            shape = [1] * (4 - len(a["in_shape"])) + list(a["in_shape"])
            pad = 4 - len(a["perm"])
            perm = list(range(pad)) + [p + pad for p in a["perm"]]
            consts.append(_array("int32_t", f"{tag}_shape", shape))
            consts.append(_array("int32_t", f"{tag}_perm", perm))
            body.append(f"    eo_transpose4({cptr(op.inputs[0])}, {cptr(y.name)}, {tag}_shape, {tag}_perm);")
        elif op.kind == "concat":
            axis = a["axis"]
            outer = int(np.prod(y.shape[:axis]))
            out_inner = int(np.prod(y.shape[axis:]))
            offset = 0
            for j, name in enumerate(op.inputs):
                t = model.tensors[name]
                in_inner = int(np.prod(t.shape[axis:]))
                table = "0"
                if a["tables"][j] is not None:
                    consts.append(_array(act, f"{tag}_t{j}", a["tables"][j]))
                    const_bytes += 256
                    table = f"{tag}_t{j}"
                body.append(f"    eo_concat_part({cptr(name)}, {cptr(y.name)} + {offset}, {outer}, {in_inner}, {out_inner}, {table});")
                offset += in_inner
        elif op.kind == "reshape":
            body.append("    /* reshape: same bytes, no code */")
        else:  # pragma: no cover
            raise AssertionError(op.kind)

    inp, out = model.input, model.output
    guard = f"{model_name.upper()}_H"
    config_h = (
        "/* generated by edgeopt: kernel configuration for this model */\n"
        "#ifndef EDGEOPT_MODEL_CONFIG_H\n#define EDGEOPT_MODEL_CONFIG_H\n"
        f"#define EO_ACT_SIGNED {1 if model.signed else 0}\n#endif\n"
    )
    model_h = f"""/* generated by edgeopt: int8 model, static memory plan (see memory.json) */
#ifndef {guard}
#define {guard}

#include <stdint.h>
#include "edgeopt_kernels.h"

#define {model_name.upper()}_INPUT_SIZE {inp.size}
#define {model_name.upper()}_OUTPUT_SIZE {out.size}
#define {model_name.upper()}_ARENA_BYTES {plan.arena_bytes}
/* real value = scale * (q - zero_point) */
#define {model_name.upper()}_INPUT_SCALE {_f32(inp.scale)}
#define {model_name.upper()}_INPUT_ZERO_POINT {inp.zero_point}
#define {model_name.upper()}_OUTPUT_SCALE {_f32(out.scale)}
#define {model_name.upper()}_OUTPUT_ZERO_POINT {out.zero_point}

/* input: {list(inp.shape)} quantized {act}, in the ONNX input's layout; output: {list(out.shape)} */
void {model_name}_run(const eo_act_t *input, eo_act_t *output);

#endif
"""
    model_c = (
        f'/* generated by edgeopt from an int8 QDQ ONNX model: {len(model.ops)} ops, '
        f'arena {plan.arena_bytes} bytes, constants {const_bytes} bytes */\n'
        f'#include "{model_name}.h"\n\n#include <string.h>\n\n'
        f"static union {{ uint8_t bytes[{max(plan.arena_bytes, 4)}]; int32_t align; }} arena;\n\n"
        + "".join(consts)
        + f"\nvoid {model_name}_run(const eo_act_t *input, eo_act_t *output)\n{{\n"
        + f"    memcpy({ptr(inp.name)}, input, {inp.size});\n"
        + "\n".join(body)
        + f"\n    memcpy(output, {ptr(out.name)}, {out.size});\n}}\n"
    )
    files = {"model_config.h": config_h, f"{model_name}.h": model_h, f"{model_name}.c": model_c}
    for fname in RUNTIME_FILES:
        files[fname] = resources.files("edgeopt.codegen").joinpath("runtime", fname).read_text(encoding="utf-8")
    return Generated(files, plan, tensor_offsets, const_bytes, model)


def memory_report(gen: Generated) -> dict:
    """The memory.json content: arena and constant bytes, the plan per buffer and tensor, the peak op."""
    model, plan = gen.lowered, gen.plan
    buffer_of = {t: b for b in plan.buffers for t in b.tensors}
    op_names = [f"{op.kind} {op.name}" for op in model.ops]
    return {
        "arena_bytes": plan.arena_bytes,
        "arena_lower_bound_bytes": plan.lower_bound_bytes,
        "constants_bytes": gen.flash_const_bytes,
        "peak_op_index": plan.peak_op,
        "peak_op": op_names[plan.peak_op] if op_names else None,
        "activation_type": "int8" if model.signed else "uint8",
        "input": {"shape": list(model.input.shape), "scale": float(model.input.scale), "zero_point": model.input.zero_point},
        "output": {"shape": list(model.output.shape), "scale": float(model.output.scale), "zero_point": model.output.zero_point},
        "buffers": [b.to_dict() for b in plan.buffers],
        "tensors": [
            {"name": t, "offset": gen.tensor_offsets[t], "size": model.tensors[t].size,
             "buffer": buffer_of[t].name, "first_op": buffer_of[t].first, "last_op": buffer_of[t].last}
            for t in model.tensors if t in buffer_of
        ],
        "ops": op_names,
    }
