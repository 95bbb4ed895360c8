"""Let the last Gemm of an int8 graph produce float: no requantized logits, no int8 Softmax.

A classifier ends Gemm -> Softmax (or Sigmoid, Flatten...) -> output. Quantized whole, ONNX Runtime
runs QGemm requantizing the logits to u8, then QLinearSoftmax, then DequantizeLinear; ORT's QGemm can
instead write float directly (its ``y_scale`` / ``y_zero_point`` inputs are optional), after which
the tail ops run in float on a dozen values. That is both faster (DS-CNN, ORT 1.32, 1 thread, AMD
Zen 4, the ratios of one interleaved run: 0.762x -> 0.743x of fp32's latency, QOperator; 0.778x ->
0.765x, QDQ) and more exact (the logits are not rounded to 256 levels, nor the probabilities).

Two steps, both by hand because ``onnxruntime.quantization`` can only exclude outputs by op type
(``OpTypesToExcludeOutputQuantization`` would float every Gemm of an MLP):

1. :func:`tail_chains` (on the float graph, after ``fold`` has fused MatMul + Add into Gemm): for
   each graph output reached from a Gemm with a constant weight through a chain of :data:`TAIL_OPS`
   only, the Gemm's output and the chain's nodes; the caller keeps those nodes float
   (``nodes_to_exclude``).
2. :func:`float_gemm_outputs` (on the quantized graph): removes the QuantizeLinear ->
   DequantizeLinear pair behind such a Gemm (QDQ form: ORT then fuses DQ, DQ -> Gemm into a QGemm
   with float output), or drops a QGemm's output scale and the DequantizeLinear after it (QOperator).

Conv outputs are never touched: ORT's QLinearConv has no float output, so a Conv with its output
left float would run as a float Conv.
"""

from __future__ import annotations

# single-input ops that may follow the last Gemm on the way to an output and run in float cheaply
TAIL_OPS = ("Softmax", "LogSoftmax", "Sigmoid", "Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze")


def tail_chains(proto) -> list[tuple[str, list[str]]]:
    """``[(gemm output tensor, [tail node names])]`` for the graph outputs fed by a constant-weight
    Gemm through :data:`TAIL_OPS` alone (each tensor on the chain read by exactly one node)."""
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    chains = []
    for out in graph.output:
        tensor, tail = out.name, []
        node = producers.get(tensor)
        while node is not None and node.op_type in TAIL_OPS:
            source = node.input[0]
            if readers.get(source, 0) != 1 or source in outputs:
                node = None
                break
            tail.append(node.name)
            tensor, node = source, producers.get(source)
        if node is None or node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if tail and not all(tail):  # unnamed nodes cannot be excluded from quantization by name
            continue
        chains.append((tensor, tail[::-1]))
    return chains


def float_gemm_outputs(proto, tensors: list[str]) -> list[str]:
    """Edit the quantized ``proto`` in place so the Gemms that produced ``tensors`` (float names from
    :func:`tail_chains`) output float; returns the tensors changed. Anything else is left alone."""
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    done = []

    def only_reader(name, op_type):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    for tensor in tensors:
        node = producers.get(tensor)
        if node is not None and node.op_type == "Gemm":  # QDQ: Gemm -> Q -> DQ -> readers
            q = only_reader(tensor, "QuantizeLinear")
            dq = only_reader(q.output[0], "DequantizeLinear") if q is not None else None
            if dq is None:
                continue
            node.output[0] = dq.output[0]
            drop = (q, dq)
        elif node is not None and node.op_type == "DequantizeLinear":
            source = producers.get(node.input[0])
            if source is None or only_reader(node.input[0], "DequantizeLinear") is None:
                continue
            if source.op_type == "QuantizeLinear":  # QDQ, the Gemm's output was a graph output: renamed
                gemm = producers.get(source.input[0])
                if gemm is None or gemm.op_type != "Gemm" or only_reader(source.input[0], "QuantizeLinear") is None:
                    continue
                gemm.output[0] = tensor
                drop = (source, node)
            elif source.op_type == "QGemm" and len(source.input) == 9:  # QOperator: QGemm -> DQ
                del source.input[7:]  # no y_scale / y_zero_point: QGemm writes float
                source.output[0] = tensor
                drop = (node,)
            else:
                continue
        else:
            continue
        for dead in drop:
            graph.node.remove(dead)
        done.append(tensor)
    return done
