"""Traced network calls (model/tracing.py): bit-identical to eager PyTorch, one trace per input signature
(taken on its second call), eager where tracing does not apply or fails."""

import gc

import numpy as np
import pytest
import torch
from conftest import make_tiny_world_model as tiny_model
from scenes import look_at
from test_model import CAMERA, START, golden_drive, observation, poses

from mirage_ros.model import DEFAULT_CHECKPOINT, WorldModel
from mirage_ros.model.tracing import TracedCalls


class Blend(torch.nn.Module):
    """A small network with the argument kinds the world model passes: tensors, a tuple of them, None."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        y = torch.nn.functional.silu(self.conv(x))
        if extra is not None:
            y = y * extra[0] + extra[1]
        return y

    def describe(self, x: torch.Tensor) -> str:
        return f"{x.shape}"


def test_traced_calls_match_eager_and_trace_once_per_signature():
    torch.manual_seed(0)
    net, calls = Blend().eval(), TracedCalls()
    x, extra = torch.randn(1, 3, 8, 8), (torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8))
    with torch.inference_mode():
        assert torch.equal(calls(net.forward, x, None), net(x, None))
        assert calls.num_traces == 0  # a first call runs eagerly
        assert torch.equal(calls(net.forward, x, None), net(x, None))
        assert calls.num_traces == 1  # the second traces
        for _ in range(2):
            assert torch.equal(calls(net.forward, x, extra), net(x, extra))
        assert calls.num_traces == 2  # None and a tuple in the same place are different signatures
        calls(net.forward, torch.randn(1, 3, 8, 8), None)
        assert calls.num_traces == 2  # new values, same signature: the same trace
        strided = torch.randn(1, 8, 8, 3).permute(0, 3, 1, 2)  # not contiguous: the trace must not care
        assert torch.equal(calls(net.forward, strided, None), net(strided, None)) and calls.num_traces == 2
        batch = torch.randn(2, 3, 8, 8)
        for _ in range(2):
            assert torch.equal(calls(net.forward, batch, None), net(batch, None))
        assert calls.num_traces == 3
    with torch.no_grad():
        net.conv.weight.mul_(-1.0)  # trained or loaded in place: the traces hold the parameters themselves
    with torch.inference_mode():
        assert torch.equal(calls(net.forward, x, extra), net(x, extra))
    # Cast and back, as WorldModel.save_pretrained does: the parameters' data is swapped, and the traces follow.
    torch.nn.Module.to(torch.nn.Module.to(net, torch.float16), torch.float32)
    with torch.inference_mode():
        assert torch.equal(calls(net.forward, x, extra), net(x, extra)) and calls.num_traces == 3


def test_a_network_computes_in_its_weights_dtype_and_answers_in_float32():
    torch.manual_seed(0)
    net, calls = Blend().eval(), TracedCalls()
    x, extra = torch.randn(1, 3, 8, 8), (torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8))
    half = torch.nn.Module.to(Blend(), torch.bfloat16).eval()
    half.load_state_dict(net.state_dict())
    with torch.inference_mode():
        expected = half(x.bfloat16(), tuple(t.bfloat16() for t in extra)).float()  # inputs cast, tuples too
        for _ in range(2):  # eager, then traced
            output = calls(half.forward, x, extra)
            assert output.dtype == torch.float32 and torch.equal(output, expected)
        assert calls.num_traces == 1
        assert (output - net(x, extra)).abs().max() < 0.1  # bfloat16 rounding, not another function


def test_a_module_that_is_gone_leaves_no_trace_behind():
    net, calls = Blend().eval(), TracedCalls()
    with torch.inference_mode():
        for _ in range(2):
            calls(net.forward, torch.randn(1, 3, 8, 8))
    assert calls.num_traces == 1
    del net  # e.g. a world model's refiner replaced by another
    gc.collect()
    assert calls.num_traces == 0


def test_traced_calls_run_eagerly_with_gradients_under_autocast_or_when_disabled():
    net, x = Blend(), torch.randn(1, 3, 8, 8)
    calls = TracedCalls()
    assert calls(net.forward, x).requires_grad  # training: eager, gradients flow
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert calls(net.forward, x).dtype == torch.float32  # computed in bfloat16, handed back in float32
    assert calls.num_traces == 0
    disabled = TracedCalls(enabled=False)
    with torch.inference_mode():
        disabled(net.forward, x)
    assert disabled.num_traces == 0


def test_a_call_that_cannot_be_traced_warns_once_and_runs_eagerly():
    net, x, calls = Blend(), torch.randn(1, 3, 8, 8), TracedCalls()
    with torch.inference_mode():
        assert calls(net.describe, x) == str(x.shape)  # a first call: eager, no attempt to trace
        with pytest.warns(RuntimeWarning, match="could not trace Blend.describe"):
            assert calls(net.describe, x) == str(x.shape)  # a string is no traceable output
        assert calls(net.describe, x) == str(x.shape)  # no second attempt, no second warning
    assert calls.num_traces == 0


def test_traced_world_model_with_several_cameras_is_bit_identical_to_eager_after_warm_up():
    back = look_at((-2.0, 0.0, 1.0), (-5.0, 0.0, 1.0))
    results = []
    for trace_networks in (True, False):
        model = tiny_model(seed=2, trace_networks=trace_networks)
        model.reset(*observation(), CAMERA.K, START)
        model.add_camera(back)
        model.warm_up()
        warmed = model.traced.num_traces
        steps = [model.step_cameras([pose, back]) for pose in poses(3)]
        assert model.traced.num_traces == warmed  # warm_up traced every call the steps make
        results.append([(r.rgb, r.depth) for step in steps for r in step])
    for (rgb, depth), (eager_rgb, eager_depth) in zip(*results):
        assert np.array_equal(rgb, eager_rgb) and np.array_equal(depth, eager_depth)


@pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "world_model.json").is_file(), reason="no shipped checkpoint")
def test_shipped_model_traced_and_warmed_up_is_bit_identical_to_eager():
    rgb, depth, K, cam_to_world = golden_drive()
    frames = []
    for trace_networks in (True, False):
        model = WorldModel.from_pretrained(seed=0, precision="float32", floor_height=0.0,
                                           trace_networks=trace_networks)
        model.reset(rgb, depth, K, cam_to_world[0])
        if trace_networks:  # the denoiser, the decoder and the read refiner (the encoder ran once, eagerly)
            model.warm_up()
            assert model.traced.num_traces == 3
        frames.append([model.step(pose) for pose in cam_to_world[1:]])
        assert model.traced.num_traces == (3 if trace_networks else 0)  # the steps needed no other trace
    for traced, eager in zip(*frames):
        assert np.array_equal(traced.rgb, eager.rgb) and np.array_equal(traced.depth, eager.depth)
