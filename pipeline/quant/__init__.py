"""Quantization that holds: a recipe per quantized variant, found by a streamed search or pinned in the manifest.

- `recipe`: what a quantized variant keeps at higher precision (state recurrences, ops) and how it
  is calibrated; the quantize stage of each backend applies it, records it in the contract and in
  `ops.json`.
- `search`: the `quant-search` stage. Starting from the stock recipe (everything at the requested
  precision, min-max ranges on the recorded trajectories), it measures per-tensor sensitivity,
  then keeps the most sensitive units at higher precision, greedily, until the target's fidelity
  goal holds on held-out speech (clean and a noisy, reverberant copy) streamed through the
  backend's own runtime on its own state; then it stops. A backend that streams candidates on a
  faster proxy of its runtime (QNN: the CPU EP for the HTP simulator) has the chosen one confirmed
  on its own runtime; one that misses there sends the search on.
- `sensitivity`: per-tensor figures on the float graph: the recorded range and the SQNR the tensor
  alone keeps at the target bit width (its own grid, every other tensor float).
"""
