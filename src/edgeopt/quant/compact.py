"""Make a quantized ONNX graph small on disk without changing what it computes.

Int8 weights alone are 0.25x of fp32, but ONNX Runtime's quantizer leaves long TensorFlow-style
tensor names repeated on every edge, node names, doc strings, one scale/zero-point initializer per
tensor even when identical, and sometimes unused initializers. On ResNet-8 that overhead is ~15% of
the file. No library does this cleanup (onnx's optimizer does not rename or dedupe), so it is here.
"""

from __future__ import annotations

import hashlib


_DIGITS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _short(i: int) -> str:
    """0 -> 'a', 61 -> '9', 62 -> 'ab', ...: every edge name costs one or two bytes."""
    s = ""
    while True:
        i, r = divmod(i, len(_DIGITS))
        s += _DIGITS[r]
        if i == 0:
            return s


# Attribute values that equal the ONNX default for every conv-like op; storing them costs bytes only.
_CONV_OPS = ("Conv", "QLinearConv", "ConvInteger", "NhwcConv")


def _is_default(attr) -> bool:
    if attr.name in ("dilations", "strides"):
        return len(attr.ints) > 0 and all(v == 1 for v in attr.ints)
    if attr.name == "pads":
        return len(attr.ints) > 0 and all(v == 0 for v in attr.ints)
    if attr.name == "group":
        return attr.i == 1
    if attr.name == "auto_pad":
        return attr.s in (b"NOTSET", b"")
    return False


def _tensor_key(t) -> bytes:
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t)
    return hashlib.sha256(f"{t.data_type}|{list(t.dims)}|".encode() + arr.tobytes()).digest()


def names_read_by_subgraphs(graph) -> set[str]:
    """Every tensor name read by a node inside a subgraph attribute (any depth). A body may read
    the outer graph's initializers by name without listing them; those must not be dropped."""
    from onnx import AttributeProto

    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs) if attr.type == AttributeProto.GRAPHS else []
            for body in bodies:
                names |= {n for inner in body.node for n in inner.input} | names_read_by_subgraphs(body)
    return names


def compact(proto, *, rename: bool = True, keep_shapes: bool = False) -> dict:
    """Edit ``proto`` in place: drop unused/duplicate initializers, doc strings, node names; shorten
    internal tensor names; drop the value_info shape hints unless ``keep_shapes``. Graph
    input/output names are kept. Returns what was removed."""
    from onnx import numpy_helper

    graph = proto.graph
    stats = {"duplicate_initializers": 0, "unused_initializers": 0}
    proto.doc_string = ""
    graph.doc_string = ""
    del proto.metadata_props[:]

    # names that control-flow bodies (If/Loop/Scan) read from this graph: kept as they are
    outer = names_read_by_subgraphs(graph)

    # 1. duplicate initializers (e.g. identical scales / zero points) -> one
    seen: dict[bytes, str] = {}
    alias: dict[str, str] = {}
    keep = []
    for init in graph.initializer:
        key = _tensor_key(init)
        if key in seen and init.name not in outer:
            alias[init.name] = seen[key]
            stats["duplicate_initializers"] += 1
        else:
            seen[key] = init.name
            keep.append(init)
    if alias:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
        del graph.initializer[:]
        graph.initializer.extend(keep)

    # 2. unused initializers
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output} | outer
    unused = [i for i in graph.initializer if i.name not in used]
    if unused:
        stats["unused_initializers"] = len(unused)
        remaining = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(remaining)
    names_of_inits = {i.name for i in graph.initializer}
    inputs_keep = [i for i in graph.input if i.name not in names_of_inits or i.name in used]
    if len(inputs_keep) != len(graph.input):
        del graph.input[:]
        graph.input.extend(inputs_keep)

    # 3. raw_data is the densest encoding of tensor payloads
    for init in graph.initializer:
        if not init.HasField("raw_data") and init.data_type != 8:  # 8 = STRING
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))

    # 4. names: keep I/O names, shorten the rest, drop node names and docs
    graph.name = "g"
    for node in graph.node:
        node.doc_string = ""
        node.name = ""
        if node.op_type in _CONV_OPS:
            kept = [a for a in node.attribute if not _is_default(a)]
            if len(kept) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(kept)
    # control-flow subgraphs refer to outer names implicitly; renaming them is not worth the risk
    has_subgraphs = any(a.type in (5, 10) for node in graph.node for a in node.attribute)  # GRAPH, GRAPHS
    if rename and not has_subgraphs:
        fixed = {v.name for v in graph.input} | {v.name for v in graph.output}
        fixed -= names_of_inits
        mapping: dict[str, str] = {}
        counter = 0

        def new_name(old: str) -> str:
            nonlocal counter
            if old == "" or old in fixed:
                return old
            if old not in mapping:
                candidate = _short(counter)
                while candidate in fixed:
                    counter += 1
                    candidate = _short(counter)
                mapping[old] = candidate
                counter += 1
            return mapping[old]

        for init in graph.initializer:
            init.name = new_name(init.name)
        for v in graph.input:
            v.name = new_name(v.name)
        for node in graph.node:
            for i, n in enumerate(node.input):
                node.input[i] = new_name(n)
            for i, n in enumerate(node.output):
                node.output[i] = new_name(n)
        kept_vi = [vi for vi in graph.value_info if vi.name in mapping]
        for vi in kept_vi:
            vi.name = mapping[vi.name]
        # value_info is only a shape hint that ORT re-derives (for the graphs int8 emits); it costs bytes
        del graph.value_info[:]
        if keep_shapes:
            graph.value_info.extend(kept_vi)
    return stats
