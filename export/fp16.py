"""float32 ONNX -> float16 ONNX with float32 islands, I/O kept in float32.

Rules:

* A node runs in fp16 when it depends (transitively) on a convolution and its op is not in the fp32
  list. Everything before the first convolution — the timestep embedding (``sin`` of arguments up to
  ~1000, which fp16 resolves to 0.5), the condition MLP, the decoder's nearest-code search — stays
  fp32; it is a negligible share of the work.
* Normalisation statistics, softmax, exponentials and reductions stay fp32 (``FP32_OPS``), and so do
  nodes in the module scopes of ``FP32_SCOPES`` (the DDIM update of the fused step graph).
* Casts are inserted wherever a tensor crosses between the two; float initializers get an fp16 copy
  for their fp16 consumers. Inputs that ONNX requires to be float32 whatever the data type (Resize
  scales) are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = frozenset({"InstanceNormalization", "GroupNormalization", "LayerNormalization",
                      "BatchNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "Exp", "Pow",
                      "Sqrt", "Erf", "ArgMin", "ArgMax", "Sin", "Cos"})
FP32_SCOPES = ("ddim_update",)  # module scopes kept in float32 (the latent accumulates across steps)
KEEP_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}  # roi / scales: float32 by the ONNX spec
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def identity_casts_to_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast nodes whose input already has the target type become Identity (no-op fp32 islands of the
    torch code); the converter places its own casts."""
    model = onnx.shape_inference.infer_shapes(model)
    types = _types(model)
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            if types.get(node.input[0]) == to:
                node.op_type = "Identity"
                del node.attribute[:]
    return model


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def convert_to_fp16(model: onnx.ModelProto, fp32_ops: frozenset[str] = FP32_OPS,
                    fp32_scopes: tuple[str, ...] = FP32_SCOPES) -> onnx.ModelProto:
    model = identity_casts_to_identity(model)
    graph = model.graph
    types = _types(model)
    conv_dependent: set[str] = set()
    half_node: list[bool] = []
    for node in graph.node:
        dependent = node.op_type == "Conv" or any(i in conv_dependent for i in node.input)
        if dependent:
            conv_dependent.update(node.output)
        in_fp32_scope = any(f"/{scope}/" in node.name or node.name.startswith(f"{scope}/") for scope in fp32_scopes)
        half_node.append(dependent and node.op_type not in fp32_ops and not in_fp32_scope)

    # Graph outputs produced in fp16 are renamed and cast back to float32 at the end.
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == FLOAT}
    renamed: dict[str, str] = {}
    for node, half in zip(graph.node, half_node, strict=True):
        for k, out in enumerate(node.output):
            if half and out in outputs:
                renamed[out] = f"{out}__fp16"
                node.output[k] = renamed[out]
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    for old, new in renamed.items():
        types[new] = types.get(old, FLOAT)

    float_inits = {t.name: t for t in graph.initializer if t.data_type == FLOAT}
    half_inits: dict[str, str] = {}
    dtype: dict[str, int] = {}  # current element type of float tensors (graph inputs: float32)
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if to == HALF else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=f"{casts[key]}__cast"))
        return casts[key]

    def half_initializer(name: str) -> str:
        if name not in half_inits:
            half_inits[name] = f"{name}__fp16"
            values = numpy_helper.to_array(float_inits[name]).astype(np.float16)
            graph.initializer.append(numpy_helper.from_array(values, half_inits[name]))
        return half_inits[name]

    for node, half in zip(list(graph.node), half_node, strict=True):
        want = HALF if half else FLOAT
        keep = KEEP_INPUTS.get(node.op_type, set())
        for k, name in enumerate(node.input):
            if not name or k in keep or types.get(name) != FLOAT:
                continue
            if name in float_inits:
                if want == HALF:
                    node.input[k] = half_initializer(name)
            elif dtype.get(name, FLOAT) != want:
                node.input[k] = cast(name, want)
        if half:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = HALF
        for out in node.output:
            if types.get(out) == FLOAT or (node.op_type == "Cast" and half):
                dtype[out] = want
        new_nodes.append(node)
    for old, new in renamed.items():
        new_nodes.append(helper.make_node("Cast", [new], [old], to=FLOAT, name=f"{old}__output_cast"))

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model
