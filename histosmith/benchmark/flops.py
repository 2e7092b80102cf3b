"""FLOPs of one graph call, counted from the ONNX graph at a concrete batch size.

Only the arithmetic that matters is counted (2 FLOPs per multiply-add): ``Conv`` (N·C_out·H_out·W_out ·
C_in/groups · k_h·k_w), ``MatMul`` (output elements · inner dimension) and ``Gemm``. Element-wise ops,
normalisation and softmax are a few percent of the total and are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from histosmith.runtime.specs import BATCH


def _concrete(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == BATCH:
                dim.dim_value = batch
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*g.input, *g.value_info, *g.output)}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    return shapes


def node_flops(path: Path, batch: int) -> list[tuple[onnx.NodeProto, int]]:
    """Every ``Conv`` / ``MatMul`` / ``Gemm`` node of the graph and its FLOPs for one call at ``batch``."""
    model = _concrete(onnx.load(str(path)), batch)
    shapes = _shapes(model)
    out_nodes = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        out = shapes.get(node.output[0])
        if not out or 0 in out:
            raise ValueError(f"{path}: no static shape for {node.output[0]} at batch {batch}")
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # (C_out, C_in/groups, k_h, k_w)
            out_nodes.append((node, 2 * int(np.prod(out)) * int(np.prod(w[1:]))))
        else:
            a = shapes[node.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            inner = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
            out_nodes.append((node, 2 * int(np.prod(out)) * int(inner)))
    return out_nodes


def count_flops(path: Path, batch: int) -> dict[str, int]:
    """FLOPs per op type (``Conv``, ``MatMul``, ``Gemm``) and ``total`` for one call at ``batch``."""
    flops = {"Conv": 0, "MatMul": 0, "Gemm": 0}
    for node, n in node_flops(path, batch):
        flops[node.op_type] += n
    flops["total"] = sum(flops.values())
    return flops
