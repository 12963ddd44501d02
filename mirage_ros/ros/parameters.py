"""Declarative ROS parameters: one table per node gives name, default, description, range and
whether the parameter may change at run time. The node declares them all with descriptors (so
``ros2 param describe`` explains them) and validates every later set request against the table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import (InvalidParameterTypeException, InvalidParameterValueException,
                              ParameterUninitializedException)
from rclpy.node import Node
from rclpy.parameter import Parameter


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: ``choices`` restricts strings, ``low``/``high`` bound numbers (inclusive),
    ``length`` fixes the size of array parameters, ``check`` is an extra rule returning an error."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    low: float | None = None
    high: float | None = None
    choices: Sequence[str] | None = None
    length: int | None = None
    check: Callable[[Any], str | None] | None = None

    def descriptor(self) -> ParameterDescriptor:
        description = self.description
        if self.choices:
            description += f" One of: {', '.join(self.choices)}."
        descriptor = ParameterDescriptor(name=self.name, description=description, read_only=self.read_only)
        if self.low is None or self.high is None or isinstance(self.default, bool):
            return descriptor
        if isinstance(self.default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(self.low), to_value=int(self.high), step=0)]
        elif isinstance(self.default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(self.low),
                                                                  to_value=float(self.high), step=0.0)]
        return descriptor

    def error(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or ``None``. rclpy already enforces types and ranges of
        scalars; this also covers array elements, string choices and cross-field rules."""
        values = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else [value]
        if self.length is not None and len(values) != self.length:
            return f"{self.name}: needs {self.length} values, got {len(values)}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name}: must be one of {list(self.choices)}, got {value!r}"
        for item in values:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if item != item or item in (float("inf"), float("-inf")):
                    return f"{self.name}: must be finite, got {item}"
                if self.low is not None and item < self.low or self.high is not None and item > self.high:
                    return f"{self.name}: must be within [{self.low}, {self.high}], got {item}"
        error = self.check(value) if self.check else None
        return f"{self.name}: {error}" if error else None


def declare_and_validate(node: Node, specs: Sequence[ParameterSpec]) -> dict[str, Any]:
    """Declare ``specs`` on ``node`` and return their values; raise ``ValueError`` on a bad value
    (from a params file or the command line), and reject bad ``set_parameters`` calls later."""
    by_name = {spec.name: spec for spec in specs}
    errors = []
    for spec in specs:
        try:
            # An empty list has no ROS type of its own (here: a string array), and a parameter file's
            # empty list leaves such a parameter unset: it then reads as the default.
            empty = isinstance(spec.default, list) and not spec.default
            node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY if empty else spec.default,
                                   spec.descriptor())
        except InvalidParameterValueException as error:  # a start-up value outside the declared range
            value = str(error).split("value: ")[-1].rsplit(":", 1)[0] if "value: " in str(error) else "?"
            errors.append(f"{spec.name}: must be within [{spec.low}, {spec.high}], got {value}")
        except InvalidParameterTypeException as error:
            errors.append(f"{spec.name}: {str(error).rsplit(':', 1)[0]}")
    if errors:
        raise ValueError("; ".join(errors))
    values = {spec.name: parameter_value(node, spec) for spec in specs}
    errors = [error for spec in specs if (error := spec.error(values[spec.name]))]
    if errors:
        raise ValueError("; ".join(errors))

    def on_set(parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            spec = by_name.get(parameter.name)
            error = spec.error(parameter.value) if spec else None
            if error:
                return SetParametersResult(successful=False, reason=error)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return values


def parameter_value(node: Node, spec: ParameterSpec) -> Any:
    """The value of a declared parameter; its default where it was declared without one and never set."""
    try:
        return node.get_parameter(spec.name).value
    except ParameterUninitializedException:
        return spec.default


def parameters_from_yaml(path: str | Path, node_name: str, specs: Sequence[ParameterSpec],
                         overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A node's parameters as a ``ros__parameters`` file sets them (plus ``overrides``), defaults for
    the rest, validated like the node validates them: for tools that build the node's pipeline
    without running the node. Keys may be ``node``, ``/node``, ``/**/node`` or ``/**``."""
    document = yaml.safe_load(Path(path).read_text()) or {}
    values = {spec.name: spec.default for spec in specs}
    for key, body in document.items():
        if key.split("/")[-1] in (node_name, "**") and isinstance(body, dict):
            values.update((body.get("ros__parameters") or {}))
    values.update(overrides or {})
    known = {spec.name: spec for spec in specs}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown parameters for {node_name}: {', '.join(unknown)}")
    errors = [error for name, spec in known.items() if (error := spec.error(values[name]))]
    wrong_type = [f"{name} should be {type(spec.default).__name__}" for name, spec in known.items()
                  if not isinstance(values[name], type(spec.default))
                  and not (isinstance(spec.default, float) and isinstance(values[name], int))]
    if errors or wrong_type:
        raise ValueError("invalid parameters: " + "; ".join(errors + wrong_type))
    return values


def default_config() -> Path:
    """``config/sim.yaml`` of the source tree (development install) or of the installed share dir."""
    source_tree = Path(__file__).resolve().parents[2] / "config" / "sim.yaml"
    if source_tree.exists():
        return source_tree
    from ament_index_python.packages import get_package_share_directory
    return Path(get_package_share_directory("mirage_ros")) / "config" / "sim.yaml"
