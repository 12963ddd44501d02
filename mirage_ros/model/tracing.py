"""The networks' forward passes replayed as recorded graphs (TorchScript traces) instead of Python.

On a CPU the denoiser runs about 400 small operations on a 16x16 grid, and dispatching them from Python
(module calls, diffusers' control flow) takes about as long as the arithmetic. A trace records the
operations of one call and replays them from C++: the same kernels in the same order, so on a CPU the
results are bit-identical to eager PyTorch (on CUDA TorchScript may fuse elementwise kernels), and the
denoiser takes ~40 % less time (the decoder, whose time is arithmetic, ~10 %).

A trace is taken per network method and per input signature (shapes, dtypes, devices, which arguments
are ``None``) on its second use, in a fraction of a second: a call made once (encoding a rollout's start
observation) runs eagerly and pays for no trace. A trace holds the module's parameters themselves, not
copies: weights loaded or trained in place are used at once, and a network that is dropped takes its
traces with it. With gradients on or under autocast the call runs eagerly. TorchScript is deprecated in
recent PyTorch; its successor, ``torch.compile``, takes tens of seconds per network on a CPU, longer than
a short rollout. Where a trace fails (a PyTorch without TorchScript, say), that call runs eagerly from
then on, after one warning.

A network computes in its weights' dtype: floating-point inputs are cast to it and the output back to
float32, so a world model in bfloat16 (its networks cast once, as diffusers' ``torch_dtype`` does) keeps
its memory and geometry in float32. Weights cast once, rather than per operation as ``torch.autocast``
does, are what make bfloat16 pay on a CPU with native bfloat16 (AVX-512 BF16, AMX): the decoder takes
two thirds of the float32 time there, the denoiser five sixths. (oneDNN graph fusion of the traces,
``torch.jit.enable_onednn_fusion``, made the bfloat16 denoiser another 25 % faster but, in PyTorch 2.13,
returned wrong results for an input that was not contiguous: not used.)
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable

import torch
from torch import nn


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with its floating-point tensors (also inside tuples) in ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(item, dtype) for item in value)
    return value


def _signature(value: Any) -> Any:
    """What a trace is specialised on: tensor shapes, dtypes and devices, and where ``None`` is passed."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.dtype, value.device
    if isinstance(value, (tuple, list)):
        return tuple(_signature(item) for item in value)
    if value is None:
        return None
    raise TypeError(f"traced calls take tensors, tuples of tensors or None, got {type(value).__name__}")


#: A signature called once so far, eagerly: its second call traces it.
_CALLED_ONCE = object()


class TracedCalls:
    """Calls network methods through traces: ``calls(model.denoiser.forward, *args)`` returns what
    ``model.denoiser(*args)`` does, with the inputs in the network's dtype and the output in float32.
    ``enabled=False``: every call runs eagerly."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        # Keyed by the module's id; an entry goes when its module does (weakref callback), so a network
        # replaced on the world model (model.refiner = other) neither keeps the old one alive nor lends it its id.
        self._traces: dict[tuple, tuple[weakref.ref, torch.jit.ScriptFunction | object | None]] = {}

    def __call__(self, method: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        module = getattr(method, "__self__", None)
        if not isinstance(module, nn.Module):
            return method(*args)
        weight = next(module.parameters(), None)
        if weight is not None and weight.is_floating_point():
            args = _cast(args, weight.dtype)
        on_cpu = weight is None or weight.device.type == "cpu"
        return _cast(self._call(module, method, args, on_cpu), torch.float32)

    def _call(self, module: nn.Module, method: Callable[..., torch.Tensor], args: tuple, on_cpu: bool) -> Any:
        if (not self.enabled or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")):
            return method(*args)
        key = (id(module), method.__name__, _signature(args))
        if key not in self._traces:  # a first call runs eagerly: a call made once is not worth its trace
            self._traces[key] = (weakref.ref(module, lambda _, key=key: self._traces.pop(key, None)), _CALLED_ONCE)
            return method(*args)
        reference, trace = self._traces[key]
        if trace is _CALLED_ONCE:
            trace = self._trace(module, method.__name__, args)
            self._traces[key] = (reference, trace)
        if trace is None:  # tracing failed once: eager from then on
            return method(*args)
        with torch.jit.optimized_execution(not on_cpu):  # see _trace
            return trace(*(arg for arg in args if arg is not None))

    def warm(self, method: Callable[..., torch.Tensor], *args: Any) -> None:
        """Make the call now so that the next one with this signature replays its trace: a first call runs
        eagerly and the second traces, the one-off costs a real-time loop should pay before its clock starts."""
        for _ in range(2):
            self(method, *args)

    @property
    def num_traces(self) -> int:
        """How many traces are held (one per network method and input signature used so far)."""
        return sum(isinstance(trace, torch.jit.ScriptFunction) for _, trace in self._traces.values())

    @staticmethod
    def _trace(module: nn.Module, name: str, args: tuple) -> torch.jit.ScriptFunction | None:
        """A trace of ``module.<name>(*args)`` as a function of the arguments that are not ``None``.

        The method is traced as a plain function, so its parameters enter the graph as constants: the
        tensors themselves, not copies. Tracing the module instead mirrors every submodule as a
        ScriptModule, five times the cost (~0.15 s for the decoder). TorchScript takes no constant that
        requires gradients, so those flags are off while the trace is taken. On a CPU the trace then runs
        without the graph executor's optimisation passes (``optimized_execution(False)``): the same kernels
        in the same order, without two slow profiling runs first (another ~0.1 s a network) and as fast
        after them, since TorchScript fuses nothing on a CPU. On CUDA the passes stay on: there they may
        fuse elementwise kernels, and a step on a GPU is bound by its kernel launches."""
        none_at = tuple(index for index, arg in enumerate(args) if arg is None)
        inputs = tuple(arg for arg in args if arg is not None)
        method = [getattr(module, name)]  # emptied once traced: the trace keeps its function, not the module

        def call(*traced: torch.Tensor) -> Any:
            arguments = list(traced)
            for index in none_at:
                arguments.insert(index, None)
            return method[0](*arguments)

        trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
        try:
            with warnings.catch_warnings():
                # TorchScript's deprecation notice, and its warnings that shape-dependent Python branches
                # (diffusers' checks on sizes) are fixed in the trace: the trace is per input signature.
                warnings.simplefilter("ignore")
                for parameter in trainable:
                    parameter.requires_grad_(False)
                return torch.jit.trace(call, inputs, check_trace=False)
        except Exception as error:  # noqa: BLE001 - any failure to trace leaves the eager call, which works
            warnings.warn(f"could not trace {type(module).__name__}.{name} ({type(error).__name__}: {error}); "
                          "it runs eagerly", RuntimeWarning, stacklevel=4)
            return None
        finally:
            method.clear()
            for parameter in trainable:
                parameter.requires_grad_(True)
