"""float32 ONNX -> float16 ONNX with float32 islands and float32 I/O, by onnxconverter-common's maintained
``convert_float_to_float16`` driven by a block list.

What stays float32 (the block list):

* op types in ``FP32_OPS``: normalisation statistics, softmax, exponentials, reductions, the codebook
  arg-min, ``sin``/``cos`` — plus the library's own list (``Resize`` scales are float32 by the spec);
* nodes that do not depend on a convolution: the timestep embedding (``sin`` of arguments up to ~1000,
  which fp16 resolves to 0.5), the condition MLP, the decoder's nearest-code search. A negligible share
  of the work;
* nodes in the module scopes of ``FP32_SCOPES`` (the DDIM update of the fused step graph: the latent
  accumulates over every step).

The converter converts initialisers in place, so the fp16 file holds each weight once (about half the
fp32 file). An initialiser read by both a float32 island and an fp16 node keeps one float32 copy and
gets one ``Cast`` for its fp16 readers; initialisers left without readers are dropped.
"""

from __future__ import annotations

import logging
import warnings

import onnx
from onnx import TensorProto, helper
from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

log = logging.getLogger(__name__)
FP32_OPS = frozenset({"InstanceNormalization", "GroupNormalization", "LayerNormalization",
                      "BatchNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "Exp", "Pow",
                      "Sqrt", "Erf", "ArgMin", "ArgMax", "Sin", "Cos"})
FP32_SCOPES = ("solver_update", "ddim_update")  # module scopes kept in float32 (ddim_update: older exports)
ARGUMENT_OPS = frozenset({"Sin", "Cos", "ArgMin", "ArgMax"})  # whatever computes their inputs stays float32
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def identity_casts_to_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast nodes whose input already has the target type become Identity (the no-op ``.float()`` islands
    of the torch code); otherwise they would pin fp32 inside converted regions."""
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            if types.get(node.input[0]) == to:
                node.op_type = "Identity"
                del node.attribute[:]
    return model


def in_scopes(name: str, scopes: tuple[str, ...]) -> bool:
    """Whether a node name (``/module/sub/Op_3``) lies in one of the module ``scopes``."""
    return any(f"/{scope}/" in name or name.startswith(f"{scope}/") for scope in scopes)


def before_first_conv(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that do not depend on any convolution (timestep embedding, condition MLP, codebook
    search): the graph's small preamble."""
    conv_dependent: set[str] = set()
    out: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Conv" or any(i in conv_dependent for i in node.input):
            conv_dependent.update(node.output)
        else:
            out.append(node.name)
    return out


def _ancestors(model: onnx.ModelProto, ops: frozenset[str]) -> set[str]:
    """Names of the nodes that feed (transitively) a node whose op is in ``ops``."""
    producers = {o: n for n in model.graph.node for o in n.output}
    pending = [i for n in model.graph.node if n.op_type in ops for i in n.input]
    seen: set[str] = set()
    while pending:
        node = producers.get(pending.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            pending.extend(node.input)
    return seen


def float32_nodes(model: onnx.ModelProto, fp32_ops: frozenset[str] = FP32_OPS,
                  fp32_scopes: tuple[str, ...] = FP32_SCOPES) -> list[str]:
    """Names of the nodes that stay float32 (see the module docstring)."""
    precise_inputs = _ancestors(model, ARGUMENT_OPS)
    return [n.name for n in model.graph.node
            if n.op_type in fp32_ops or n.name in precise_inputs or in_scopes(n.name, fp32_scopes)]


def _name_nodes(model: onnx.ModelProto) -> None:
    """The converter addresses nodes by name: give unnamed ones a unique name."""
    seen: set[str] = set()
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{k}"
        seen.add(node.name)


def _split_shared_initializers(model: onnx.ModelProto, blocked: set[str], blocked_ops: set[str]) -> None:
    """An initialiser read by float32 and fp16 nodes alike stays float32; its fp16 readers get a Cast."""
    g = model.graph
    floats = {t.name for t in g.initializer if t.data_type == FLOAT}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in floats:
                readers.setdefault(name, []).append((node, k))
    casts = []
    for name, uses in readers.items():
        is_blocked = [n.name in blocked or n.op_type in blocked_ops for n, _ in uses]
        if any(is_blocked) and not all(is_blocked):
            cast_out = f"{name}__fp16"
            casts.append(helper.make_node("Cast", [name], [cast_out], to=HALF, name=f"{name}__cast_fp16"))
            for (node, k), b in zip(uses, is_blocked, strict=True):
                if not b:
                    node.input[k] = cast_out
    # The casts read float32 initialisers and are themselves blocked (their input must stay float32).
    for c in casts:
        blocked.add(c.name)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)


def _restore_float32_outputs(model: onnx.ModelProto, outputs: set[str]) -> None:
    """The converter casts a blocked node's float32 result to fp16 even where it is a graph output (despite
    ``keep_io_types``): make that cast an Identity and declare the output float32 again."""
    g = model.graph
    producers = {out: node for node in g.node for out in node.output}
    for output in g.output:
        if output.name in outputs and output.type.tensor_type.elem_type == HALF:
            node = producers[output.name]
            if node.op_type == "Cast":
                node.op_type = "Identity"
                del node.attribute[:]
            else:
                node.output[list(node.output).index(output.name)] = f"{output.name}__fp16"
                g.node.append(helper.make_node("Cast", [f"{output.name}__fp16"], [output.name], to=FLOAT,
                                               name=f"{output.name}__cast_fp32"))
            output.type.tensor_type.elem_type = FLOAT


def _drop_round_trips(model: onnx.ModelProto) -> int:
    """``Cast(fp16)`` followed by ``Cast(fp32)`` between two float32 nodes (the converter casts every blocked
    node's output to fp16 and back, even between neighbouring blocked nodes): read the float32 value
    directly, so float32 islands never round through fp16. Returns how many round trips were removed."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    graph_outputs = {o.name for o in g.output}

    def cast_to(node: onnx.NodeProto | None, to: int) -> bool:
        return node is not None and node.op_type == "Cast" and node.attribute[0].i == to

    rename: dict[str, str] = {}
    for node in g.node:
        up = producers.get(node.input[0]) if node.input else None
        if cast_to(node, FLOAT) and cast_to(up, HALF) and node.output[0] not in graph_outputs:
            rename[node.output[0]] = up.input[0]
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    used = {i for n in g.node for i in n.input} | graph_outputs
    while True:  # drop casts whose results nobody reads any more
        dead = [n for n in g.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
        used = {i for n in g.node for i in n.input} | graph_outputs
    return len(rename)


def remove_unused_initializers(model: onnx.ModelProto) -> int:
    """Drop initialisers no node reads (returns how many)."""
    g = model.graph
    used = {name for node in g.node for name in node.input} | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:
        g.initializer.remove(t)
    return len(unused)


def convert_to_fp16(model: onnx.ModelProto, fp32_ops: frozenset[str] = FP32_OPS,
                    fp32_scopes: tuple[str, ...] = FP32_SCOPES) -> onnx.ModelProto:
    """fp16 graph with the float32 islands described above; inputs and outputs stay float32."""
    model = identity_casts_to_identity(model)
    _name_nodes(model)
    blocked = set(float32_nodes(model, fp32_ops, fp32_scopes))
    blocked_ops = set(DEFAULT_OP_BLOCK_LIST) | set(fp32_ops)
    _split_shared_initializers(model, blocked, blocked_ops)
    del model.graph.value_info[:]
    float_outputs = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == FLOAT}
    # The converter warns once per weight it clamps into fp16's range (|w| < 1e-7 or > 65504); such tiny
    # weights are expected and harmless, so they are counted here instead of flooding the console.
    with warnings.catch_warnings(record=True) as clamped:
        warnings.simplefilter("always")
        converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=sorted(blocked_ops),
                                             node_block_list=sorted(blocked))
    for w in clamped:
        if "will be truncated" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    log.debug("fp16 conversion: %d weights clamped into the fp16 range", len(clamped))
    _restore_float32_outputs(converted, float_outputs)
    _drop_round_trips(converted)
    dropped = remove_unused_initializers(converted)
    log.debug("fp16 conversion: %d float32 nodes, %d unused initialisers dropped", len(blocked), dropped)
    del converted.graph.value_info[:]
    converted = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    onnx.checker.check_model(converted)
    return converted
