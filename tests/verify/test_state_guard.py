"""The shared state-range guard: a state output whose encoding cannot hold its state input's recorded range fails
naming the tensor, both ranges and the fix; float states pass; guard.json records every pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.contract import Quantization
from pipeline.errors import UserError
from pipeline.spec import StateSpec
from pipeline.verify.state_guard import GUARD_FILE, Encoded, covers, guard, representable

STATES = (StateSpec(input="s_in", output="s_out", shape=(1, 4)),)
RANGES = {"s_in": {"min": -3.0, "max": 3.0}}
SYMMETRIC = Quantization(scale=3.0 / 127, zero_point=0, dtype="int8")
RELU_RANGE = Quantization(scale=4.0 / 255, zero_point=-128, dtype="int8")  # [0, 4]: what a Relu reader gets


def test_representable_ranges_of_each_integer_type() -> None:
    assert representable(Quantization(scale=0.5, zero_point=0, dtype="int16")) == (-16384.0, 16383.5)
    assert representable(Quantization(scale=1.0, zero_point=128, dtype="uint8")) == (-128.0, 127.0)
    low, high = representable(RELU_RANGE)
    assert low == 0.0 and high == pytest.approx(4.0)
    assert covers(SYMMETRIC, -3.0, 3.0) and not covers(RELU_RANGE, -3.0, 3.0) and covers(None, -1e9, 1e9)
    assert covers(SYMMETRIC, -3.1, 3.1, slack=0.1) and not covers(SYMMETRIC, -3.2, 3.0)


def test_a_state_output_clamped_at_zero_fails_naming_tensor_ranges_and_fix(tmp_path: Path) -> None:
    outputs = {"s_out": [Encoded("model/relu_in;s_out", RELU_RANGE)]}
    entries = {"s_in": [Encoded("s_in_quantized", SYMMETRIC)]}
    with pytest.raises(UserError) as caught:
        guard(STATES, RANGES, outputs, entries, tmp_path, variant="litert-int8@20ms", where="tflite-int8@20ms", fix=lambda s: f"keep {s} float")
    message = str(caught.value)
    expected = ("tflite-int8@20ms", "litert-int8@20ms", "state output 's_out' (tensor 'model/relu_in;s_out')", "[0, 4]", "feeds back as 's_in'")
    for part in (*expected, "[-3, 3]", "keep ['s_in'] float"):
        assert part in message, message
    record = json.loads((tmp_path / GUARD_FILE).read_text())["s_out"]
    assert not record["covered"] and not record["output"][0]["covered"] and record["input"][0]["covered"]
    assert record["state_input_range"] == [-3.0, 3.0] and record["output"][0]["tensor"] == "model/relu_in;s_out"


def test_a_state_input_clipped_on_entry_fails_and_float_states_pass(tmp_path: Path) -> None:
    entries = {"s_in": [Encoded("s_in_quantized", RELU_RANGE)]}
    with pytest.raises(UserError, match="state input 's_in' is quantized on entry \\(tensor 's_in_quantized'\\)"):
        guard(STATES, RANGES, {"s_out": [Encoded("s_out", None)]}, entries, tmp_path, variant="v", where="w", fix=lambda s: "fix")
    record = guard(STATES, RANGES, {"s_out": [Encoded("s_out", None)]}, {}, tmp_path, variant="v", where="w", fix=lambda s: "fix")
    assert record["s_out"]["covered"] and record["s_out"]["output"][0]["float"] and record["s_out"]["input"][0]["float"]
    assert record["s_out"]["representable"] is None
    unranged = guard(STATES, None, {"s_out": [Encoded("s_out", None)]}, {}, tmp_path, variant="v", where="w", fix=lambda s: "fix")
    assert unranged["s_out"]["state_input_range"] is None and json.loads((tmp_path / GUARD_FILE).read_text()) == unranged


def test_each_part_of_a_state_is_held_to_the_range_its_own_values_take(tmp_path: Path) -> None:
    """A two-layer state [2, 2]: layer 0 ranges over [-3, 3], layer 1 over [-0.5, 0.5]. Each layer's slice may have
    a range of its own, but one short of its own values still fails, and without extents a part is held to the whole."""
    states = (StateSpec(input="s_in", output="s_out", shape=(2, 2)),)
    extents = {"s_in": (np.array([[-3.0, -1.0], [-0.5, -0.2]]), np.array([[2.0, 3.0], [0.4, 0.5]]))}
    narrow = Quantization(scale=0.5 / 127, zero_point=0, dtype="int8")  # [-0.5, 0.5]
    parts = {"s_out": [Encoded("layer0", SYMMETRIC, (0, 1)), Encoded("layer1", narrow, (2, 3))]}
    entries = {"s_in": [Encoded("slice0", SYMMETRIC, (0, 1)), Encoded("slice1", narrow, (2, 3))]}
    record = guard(states, RANGES, parts, entries, tmp_path, variant="v", where="w", fix=lambda s: "fix", extents=extents)
    assert record["s_out"]["covered"] and record["s_out"]["output"][1]["region_range"] == [-0.5, 0.5]
    with pytest.raises(UserError, match=r"tensor 'slice1'.*short of the \[-3, 3\]"):
        guard(states, RANGES, parts, entries, tmp_path, variant="v", where="w", fix=lambda s: "fix")
    swapped = {"s_in": [Encoded("slice0", narrow, (0, 1))]}
    with pytest.raises(UserError, match=r"tensor 'slice0'.*short of the \[-3, 3\] it ranges over \(2 of its values\)"):
        guard(states, RANGES, {"s_out": [Encoded("s_out", None)]}, swapped, tmp_path, variant="v", where="w", fix=lambda s: "fix", extents=extents)
