"""Would TensorRT 10's ONNX parser take these graphs? A check that runs without TensorRT.

`check_model` walks every node (and subgraph) of an ONNX model with its inferred types and reports what TensorRT
10.x's parser would refuse or silently change: an op it does not support, a tensor type an op does not take
there, and the per-op restrictions of the parser's support matrix. `spatialreward export check DIR` prints the
findings of an export folder; zero findings is the bar every preset's export is held to (tests/test_export_*.py).

Source of the table: the parser's support matrix, ``docs/operators.md`` of https://github.com/onnx/onnx-tensorrt
(branch ``release/10.x``, the parser shipped with TensorRT 10), transcribed by hand for the operators a ViT-style
network exports to plus their common neighbours. An operator that is not in the table is a finding ("not in the
table"), never a silent pass: extend the table from that document when a new op appears. Restrictions encoded:

* types per op (TensorRT 10 has native INT64 and BF16; DOUBLE is not a TensorRT type; UINT8 only at the network
  boundary and through Cast);
* ``axes`` of Slice / Squeeze / Unsqueeze / Reduce* and ``K`` of TopK must be constants (initializer or Constant);
* Conv / ConvTranspose weights must be initializers; Range with float inputs needs constant inputs;
* LayerNormalization: only the first output (``Y``) is supported; mean / inv-std outputs are refused;
* RoiAlign goes through the ``ROIAlign_TRT`` plugin: FP32/FP16 only, and we require an explicit
  ``coordinate_transformation_mode`` (a missing one means ``output_half_pixel``, the legacy torchvision mode);
* NonZero and Unique produce data-dependent shapes: refused here (Unique is unsupported, NonZero needs a
  data-dependent-shape path and no CUDA-graph capture), as are non-standard domains (``com.microsoft``);
* zero-sized tensors and rank > 8 tensors (TensorRT's ``Dims::MAX_DIMS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

F, H, BF, I8, I32, I64, U8, B = "FP32", "FP16", "BF16", "INT8", "INT32", "INT64", "UINT8", "BOOL"
FLOATS = frozenset({F, H, BF})
NUMERIC = frozenset({F, H, BF, I32, I64})
ANY = frozenset({F, H, BF, I8, I32, I64, B})

# op -> tensor types of its data input ("T") that TensorRT 10's parser takes. release/10.x docs/operators.md.
SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    **{op: FLOATS for op in (
        "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Celu", "Cos", "Cosh", "Erf", "Exp", "Floor",
        "Gelu", "Log", "LogSoftmax", "Softmax", "Sin", "Sinh", "Sqrt", "Tan", "Reciprocal", "MatMul",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "LayerNormalization",
        "GroupNormalization", "InstanceNormalization", "BatchNormalization", "Softplus", "Softsign", "HardSigmoid",
        "HardSwish", "GridSample", "Resize", "Dropout",
    )},
    **{op: FLOATS | {I8} for op in ("Conv", "ConvTranspose", "Gemm", "Relu", "LeakyRelu", "Elu", "Selu", "PRelu",
                                    "Sigmoid", "Tanh", "Round", "GlobalAveragePool", "GlobalMaxPool", "MaxPool")},
    "AveragePool": FLOATS | {I8, I32},
    **{op: NUMERIC for op in ("Add", "Sub", "Mul", "Div", "Pow", "Abs", "Neg", "Max", "Min", "Mean", "Sum", "Mod",
                              "Sign", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "ReduceMax",
                              "ReduceMin", "ReduceMean", "ReduceSum", "ReduceProd", "CumSum", "ArgMax", "ArgMin",
                              "TopK", "Clip")},
    **{op: frozenset({B}) for op in ("And", "Or", "Xor", "Not")},
    "Cast": ANY | {U8},
    **{op: ANY for op in ("Concat", "Constant", "ConstantOfShape", "Expand", "Flatten", "Gather", "GatherElements",
                          "GatherND", "Identity", "Reshape", "Shape", "Size", "Slice", "Split", "Squeeze",
                          "Unsqueeze", "Transpose", "Tile", "Where", "Pad", "ScatterElements", "ScatterND",
                          "Trilu", "DepthToSpace", "SpaceToDepth", "OneHot", "If", "Loop", "EyeLike")},
    "Range": frozenset({F, H, I32, I64}),
    "IsNaN": FLOATS | {I32},
    "IsInf": FLOATS,
    "RoiAlign": frozenset({F, H}),  # ROIAlign_TRT plugin
    "Einsum": FLOATS,
}
# ops the parser refuses outright, or that we refuse for data-dependent shapes
REFUSED = {
    "Unique": "not supported by the TensorRT parser",
    "NonZero": "data-dependent output shape (no static profile, no CUDA-graph capture)",
    "Compress": "not supported by the TensorRT parser",
    "StringNormalizer": "strings are not a TensorRT type",
    "TfIdfVectorizer": "not supported by the TensorRT parser",
    "SequenceConstruct": "sequences are not supported", "SequenceAt": "sequences are not supported",
    "SplitToSequence": "sequences are not supported", "ConcatFromSequence": "sequences are not supported",
    "Bernoulli": "not supported by the TensorRT parser", "Multinomial": "not supported by the TensorRT parser",
    "MaxRoiPool": "not supported by the TensorRT parser", "MaxUnpool": "not supported by the TensorRT parser",
}
# which input carries the op's data type "T" (default 0)
DATA_INPUT = {"Where": 1}
# input index that must be a constant (initializer or Constant output), per op
CONSTANT_INPUTS = {
    "Slice": {3: "axes"}, "Squeeze": {1: "axes"}, "Unsqueeze": {1: "axes"}, "TopK": {1: "K"},
    **{op: {1: "axes"} for op in ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL1",
                                  "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    "Conv": {1: "weights W"}, "ConvTranspose": {1: "weights W"}, "CumSum": {1: "axis"},
}
IO_TYPES = frozenset({F, H, BF, I8, I32, I64, U8, B})
MAX_DIMS = 8

_ONNX_TO_NAME = {1: F, 2: U8, 3: I8, 6: I32, 7: I64, 9: B, 10: H, 11: "DOUBLE", 16: BF, 4: "UINT16", 5: "INT16",
                 12: "UINT32", 13: "UINT64", 8: "STRING"}


@dataclass(frozen=True)
class Finding:
    """One thing TensorRT would refuse or change: which graph, which node (op and name) and why."""

    graph: str
    node: str
    op: str
    problem: str

    def __str__(self) -> str:
        return f"{self.graph}: {self.op} node {self.node!r}: {self.problem}"


def _types_and_constants(model):
    """Elem type per value name (inputs, outputs, value_info, initializers) and the set of constant names."""
    graph = model.graph
    types: dict[str, int] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    constants = set()
    for init in graph.initializer:
        types[init.name] = init.data_type
        constants.add(init.name)
    for node in graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
    return types, constants


def _shapes(model):
    out = {}
    graph = model.graph
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return out


def check_model(model, name: str = "model") -> list[Finding]:
    """Findings for one ONNX model (``onnx.ModelProto`` or a path). Shape inference runs first (types are
    needed); a model that fails it is itself a finding."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    findings: list[Finding] = []
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - report, don't crash: that is the point of a check
        return [Finding(name, "-", "-", f"shape inference fails ({exc})")]
    types, constants = _types_and_constants(model)
    shapes = _shapes(model)

    def tname(value: str) -> str | None:
        return _ONNX_TO_NAME.get(types[value], str(types[value])) if value in types else None

    for vi in [*model.graph.input, *model.graph.output]:
        t = tname(vi.name)
        if t is not None and t not in IO_TYPES:
            findings.append(Finding(name, vi.name, "I/O", f"type {t} cannot be a TensorRT network input/output"))
    for value, dims in shapes.items():
        if len(dims) > MAX_DIMS:
            findings.append(Finding(name, value, "tensor", f"rank {len(dims)} exceeds TensorRT's {MAX_DIMS}"))
        if any(d == 0 for d in dims):
            findings.append(Finding(name, value, "tensor", f"zero-sized tensor {dims}"))

    for node in model.graph.node:
        findings.extend(_check_node(node, name, tname, constants))
    return findings


def _check_node(node, graph: str, tname, constants) -> list[Finding]:
    found = []
    op, label = node.op_type, node.name or (node.output[0] if node.output else "?")

    def add(problem: str) -> None:
        found.append(Finding(graph, label, op, problem))

    if node.domain not in ("", "ai.onnx"):
        add(f"domain {node.domain!r} is not standard ONNX (TensorRT parses ai.onnx only, plus registered plugins)")
        return found
    if op in REFUSED:
        add(REFUSED[op])
        return found
    if op not in SUPPORTED_TYPES:
        add("not in the TensorRT-10 support table (extend export/trt_check.py from onnx-tensorrt's operators.md)")
        return found
    for value in [*node.input, *node.output]:
        if value and tname(value) == "DOUBLE":
            add(f"{value!r} is DOUBLE (not a TensorRT type; export in fp32)")
    data = DATA_INPUT.get(op, 0)
    if op != "Constant" and len(node.input) > data and node.input[data]:
        t = tname(node.input[data])
        if t is not None and t not in SUPPORTED_TYPES[op]:
            add(f"input {node.input[data]!r} is {t}; TensorRT 10 takes {', '.join(sorted(SUPPORTED_TYPES[op]))}")
    if op == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        t = _ONNX_TO_NAME.get(to, str(to))
        if t not in SUPPORTED_TYPES["Cast"]:
            add(f"casts to {t}, which TensorRT 10 does not have inside a network")
    for index, what in CONSTANT_INPUTS.get(op, {}).items():
        if len(node.input) > index and node.input[index] and node.input[index] not in constants:
            add(f"{what} (input {index}) must be a constant (initializer or Constant), got {node.input[index]!r}")
    if op == "Range" and tname(node.input[0]) in FLOATS and not all(v in constants for v in node.input):
        add("float Range needs constant start / limit / delta")
    if op == "LayerNormalization" and any(node.output[1:]):
        add("only the first output (Y) is supported; the Mean / InvStdDev outputs are used")
    if op == "RoiAlign":
        attrs = {a.name: a for a in node.attribute}
        if "coordinate_transformation_mode" not in attrs:
            add("no coordinate_transformation_mode attribute (ONNX Runtime and TensorRT then use output_half_pixel)")
        mode = attrs["mode"].s.decode() if "mode" in attrs else "avg"
        if mode not in ("avg", "max"):
            add(f"mode {mode!r}; the ROIAlign_TRT plugin takes avg or max")
    return found


def check_export(directory: str | Path) -> list[Finding]:
    """Findings for every ``*.onnx`` graph of an export folder (``encode.onnx``, ``score.onnx``, …)."""
    directory = Path(directory)
    graphs = sorted(directory.glob("*.onnx"))
    if not graphs:
        raise FileNotFoundError(f"{directory}: no .onnx graphs (write them with `spatialreward export onnx`)")
    return [f for path in graphs for f in check_model(path, path.name)]
