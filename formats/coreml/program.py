"""Run a saved Core ML ML Program without the Core ML runtime (which exists only on Apple platforms).

The package's MIL program is loaded back into coremltools' Python representation and evaluated op by op with each
op's own `value_inference` — the numpy semantics coremltools uses for constant folding — so what runs is the saved
program itself, weights and compression included. Three things need help: inputs with flexible shapes (each value's
type is re-bound to its concrete shape), the state ops (`read_state` / `coreml_update_state` read and write a
dictionary of arrays), and the few ops without value inference (activations), done in numpy here. Matrix products
run in float32 (weights converted once) and are rounded back to the program's dtype: numpy's float16 arithmetic has
no BLAS and is far slower.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from formats.coreml.export import PACKAGE, quiet_coremltools


def _silu(op, f32):
    x = f32(op.x)
    return x / (1.0 + np.exp(-x))


def _gelu(op, f32):
    x = f32(op.x)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _linear(op, f32):
    out = f32(op.x) @ f32(op.weight).T
    return out if op.bias is None else out + f32(op.bias)


def _matmul(op, f32):
    x, y = f32(op.x), f32(op.y)
    x = np.swapaxes(x, -1, -2) if op.transpose_x.val else x
    y = np.swapaxes(y, -1, -2) if op.transpose_y.val else y
    return x @ y


NUMPY_OPS = {"silu": _silu, "gelu": _gelu, "linear": _linear, "matmul": _matmul,
             "shape": lambda op, f32: np.array(op.x.val.shape, dtype=np.int32)}


class CoremlProgram:
    """A saved `.mlpackage`, loaded for evaluation: `program(feeds)` runs one prediction and updates `states`."""

    def __init__(self, package: Path):
        ct = quiet_coremltools()
        from coremltools.converters.mil.frontend.milproto.load import load

        model = ct.models.MLModel(str(package), skip_model_load=True)
        self.spec = model.get_spec()
        program = load(self.spec, self.spec.specificationVersion, file_weights_dir=model.weights_dir)
        self.function = program.functions["main"]
        self.operations = [op for op in self.function.operations if op.op_type != "const"]
        for op in self.function.operations:
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.bool_):
                _bind(op.outputs[0], bool(op.outputs[0].val))  # numpy 2 refuses numpy bools as keepdims etc.
        # Compressed weights are constexpr ops over constants: expand them once, not on every call.
        for op in [op for op in self.operations if op.op_type.startswith("constexpr_")]:
            _bind_outputs(op, op.materialized_val_inference())
            self.operations.remove(op)
        evaluated = {id(op) for op in self.operations}
        self.constants = {var.name for op in self.function.operations if id(op) not in evaluated
                          for var in op.outputs}
        self.float32: dict[str, np.ndarray] = {}  # weights, converted once rather than on every call
        self.states: dict[str, np.ndarray] = {}
        self.reset()

    @classmethod
    def from_artifact(cls, artifact_dir: Path) -> "CoremlProgram":
        return cls(artifact_dir / PACKAGE)

    def reset(self) -> None:
        """Empty states (zeros), as a new `MLState` is on device."""
        for state in self.spec.description.state:
            array = state.type.stateType.arrayType
            self.states[state.name] = np.zeros(tuple(array.shape), dtype=np.float16)

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, var in self.function.inputs.items():
            if name not in self.states:
                _bind(var, feeds[name])
        for op in self.operations:
            if op.op_type == "read_state":
                result = self.states[op.input.name]
            elif op.op_type == "coreml_update_state":
                self.states[op.state.name] = result = op.value.val
            elif op.op_type in NUMPY_OPS:
                result = NUMPY_OPS[op.op_type](op, self._float32)
            else:
                result = op.value_inference()
            _bind_outputs(op, result)
        return {var.name: np.asarray(var.val) for var in self.function.outputs}

    def _float32(self, var) -> np.ndarray:
        if var.name not in self.constants:
            return var.val.astype(np.float32)
        if var.name not in self.float32:
            self.float32[var.name] = var.val.astype(np.float32)
        return self.float32[var.name]


def _bind_outputs(op, result) -> None:
    results = result if len(op.outputs) > 1 else (result,)
    for var, value in zip(op.outputs, results):
        _bind(var, value)


def _bind(var, value) -> None:
    """Give `var` a concrete value, re-typing it to the value's actual shape (flexible dims become numbers)."""
    from coremltools.converters.mil.mil import types

    if types.is_tensor(var.sym_type):
        value = np.asarray(value).astype(types.nptype_from_builtin(var.dtype), copy=False)
        var._sym_type = types.tensor(var.dtype, value.shape)
    typed = var.sym_type()
    typed.val = value
    var._sym_val = typed
