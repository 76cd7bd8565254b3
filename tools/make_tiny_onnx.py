"""Build extract/tests/data/tiny.onnx, the test model of the feature-extraction stage.

input [N, 3, H, W] -> GlobalAveragePool -> Flatten -> [N, 3] = m
features = m @ W + b with W = [[1, 0], [0, 2], [1, -1]], b = [0.5, -0.5]   (shape [N, 2])
logits   = 10 * features                                                     (shape [N, 2])

So features = [m0 + m2 + 0.5, 2 m1 - m2 - 0.5], computable by hand from channel means.
Needs the `onnx` package: python tools/make_tiny_onnx.py (deterministic output).
"""
import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

W = numpy_helper.from_array(np.array([[1, 0], [0, 2], [1, -1]], dtype=np.float32), "W")
B = numpy_helper.from_array(np.array([0.5, -0.5], dtype=np.float32), "B")
TEN = numpy_helper.from_array(np.array([10.0], dtype=np.float32), "ten")
nodes = [
    helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
    helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
    helper.make_node("Gemm", ["flat", "W", "B"], ["features"]),
    helper.make_node("Mul", ["features", "ten"], ["logits"]),
]
graph = helper.make_graph(
    nodes,
    "tiny",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    [
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
    ],
    initializer=[W, B, TEN],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="plflow")
model.ir_version = 7
onnx.checker.check_model(model)
onnx.save(model, "extract/tests/data/tiny.onnx")
