"""Adapters: the user's standard recurrent layers in a formulation every converter takes.

`nn.LSTM` and `nn.GRU` export to ONNX's fused LSTM/GRU ops, which onnx2tf, Core ML's and QNN's
converters take badly or not at all; `nn.LSTMCell`'s `unsafe_chunk` breaks the TorchScript
exporter. Each adapter here holds the very same Parameter objects as the module it replaces and
computes the same function with explicit gates and static slices (a chunk has a static number of
frames, so a sequence layer is unrolled). The trace stage swaps them in on a copy of the model and
checks the copy against the original on real chunks before anything is exported from it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


def _gates(x: "torch.Tensor", h: "torch.Tensor", w_ih, w_hh, b_ih, b_hh) -> tuple["torch.Tensor", "torch.Tensor"]:
    gx = x @ w_ih.t() + (b_ih if b_ih is not None else 0)
    gh = h @ w_hh.t() + (b_hh if b_hh is not None else 0)
    return gx, gh


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step in PyTorch's gate order (input, forget, cell, output), static slices only."""
    import torch

    gx, gh = _gates(x, h, w_ih, w_hh, b_ih, b_hh)
    gates = gx + gh
    n = h.shape[-1]
    i, f = torch.sigmoid(gates[..., 0:n]), torch.sigmoid(gates[..., n : 2 * n])
    g, o = torch.tanh(gates[..., 2 * n : 3 * n]), torch.sigmoid(gates[..., 3 * n : 4 * n])
    c = f * c + i * g
    return o * torch.tanh(c), c


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step in PyTorch's gate order (reset, update, new), static slices only."""
    import torch

    gx, gh = _gates(x, h, w_ih, w_hh, b_ih, b_hh)
    n = h.shape[-1]
    r = torch.sigmoid(gx[..., 0:n] + gh[..., 0:n])
    z = torch.sigmoid(gx[..., n : 2 * n] + gh[..., n : 2 * n])
    candidate = torch.tanh(gx[..., 2 * n : 3 * n] + r * gh[..., 2 * n : 3 * n])
    return candidate + z * (h - candidate)


def _layer_weights(module: "nn.Module", layer: int) -> tuple:
    bias = getattr(module, "bias", True)
    return (
        getattr(module, f"weight_ih_l{layer}"),
        getattr(module, f"weight_hh_l{layer}"),
        getattr(module, f"bias_ih_l{layer}") if bias else None,
        getattr(module, f"bias_hh_l{layer}") if bias else None,
    )


def _make_adapters():
    import torch
    from torch import nn

    class ExplicitLSTMCell(nn.Module):
        def __init__(self, original: nn.LSTMCell) -> None:
            super().__init__()
            self.weight_ih, self.weight_hh = original.weight_ih, original.weight_hh
            self.bias_ih, self.bias_hh = original.bias_ih, original.bias_hh
            self.hidden_size = original.hidden_size

        def forward(self, x, state=None):
            if state is None:
                zeros = x.new_zeros(*x.shape[:-1], self.hidden_size)
                state = (zeros, zeros)
            return lstm_step(x, state[0], state[1], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    class ExplicitGRUCell(nn.Module):
        def __init__(self, original: nn.GRUCell) -> None:
            super().__init__()
            self.weight_ih, self.weight_hh = original.weight_ih, original.weight_hh
            self.bias_ih, self.bias_hh = original.bias_ih, original.bias_hh
            self.hidden_size = original.hidden_size

        def forward(self, x, h=None):
            if h is None:
                h = x.new_zeros(*x.shape[:-1], self.hidden_size)
            return gru_step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    class UnrolledRNN(nn.Module):
        """nn.LSTM / nn.GRU (unidirectional, no projection) unrolled over the frames of a chunk."""

        def __init__(self, original: nn.RNNBase, lstm: bool) -> None:
            super().__init__()
            self.lstm, self.layers, self.batch_first = lstm, original.num_layers, original.batch_first
            self.hidden_size = original.hidden_size
            for layer in range(self.layers):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    if hasattr(original, f"{name}_l{layer}"):
                        setattr(self, f"{name}_l{layer}", getattr(original, f"{name}_l{layer}"))
            self.bias = original.bias

        def forward(self, x, state=None):
            # PyTorch's conventions: [B, T, F] (batch_first) or [T, B, F]; unbatched [T, F] with state [layers, H]
            batched = x.dim() == 3
            if not batched:
                sequence = x.unsqueeze(1)
                if state is not None:
                    state = tuple(s.unsqueeze(1) for s in state) if self.lstm else state.unsqueeze(1)
            else:
                sequence = x.transpose(0, 1) if self.batch_first else x
            if state is None:
                zeros = sequence.new_zeros(self.layers, sequence.shape[1], self.hidden_size)
                state = (zeros, zeros) if self.lstm else zeros
            h = [(state[0] if self.lstm else state)[k] for k in range(self.layers)]
            c = [state[1][k] for k in range(self.layers)] if self.lstm else []
            outputs = []
            for t in range(sequence.shape[0]):
                layer_in = sequence[t]
                for k in range(self.layers):
                    weights = _layer_weights(self, k)
                    if self.lstm:
                        h[k], c[k] = lstm_step(layer_in, h[k], c[k], *weights)
                    else:
                        h[k] = gru_step(layer_in, h[k], *weights)
                    layer_in = h[k]
                outputs.append(layer_in)
            y = torch.stack(outputs, dim=0)  # [T, B, H]
            h_out = torch.stack(h, dim=0)
            c_out = torch.stack(c, dim=0) if self.lstm else None
            if not batched:
                y, h_out = y[:, 0], h_out[:, 0]
                c_out = c_out[:, 0] if c_out is not None else None
            elif self.batch_first:
                y = y.transpose(0, 1)
            return (y, (h_out, c_out)) if self.lstm else (y, h_out)

    return ExplicitLSTMCell, ExplicitGRUCell, UnrolledRNN


def adapt(model: "nn.Module") -> tuple["nn.Module", list[str]]:
    """A copy of `model` with its recurrent layers replaced by adapters sharing their parameters, and what was swapped."""
    from torch import nn

    lstm_cell, gru_cell, unrolled = _make_adapters()
    swapped: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        replacement = None
        if type(module) is nn.LSTMCell:
            replacement = lstm_cell(module)
        elif type(module) is nn.GRUCell:
            replacement = gru_cell(module)
        elif type(module) in (nn.LSTM, nn.GRU):
            if module.bidirectional or getattr(module, "proj_size", 0):
                raise UserError(
                    f"{name or 'model'}: a bidirectional or projected {type(module).__name__} looks at the future or "
                    "has no streaming form speechport adapts",
                    where="model.factory",
                    hint="stream a unidirectional layer without proj_size",
                )
            replacement = unrolled(module, lstm=type(module) is nn.LSTM)
        if replacement is not None:
            swapped.append((name, replacement))
    if not swapped:
        return model, []
    adapted = copy.copy(model)  # shallow: parameters are shared, only the module tree below is rebuilt
    adapted._modules = dict(model._modules)
    described = []
    for name, replacement in swapped:
        parent = adapted
        parts = name.split(".")
        for part in parts[:-1]:
            child = copy.copy(parent._modules[part])
            child._modules = dict(child._modules)
            parent._modules[part] = child
            parent = child
        original = parent._modules[parts[-1]]
        parent._modules[parts[-1]] = replacement.train(original.training)
        described.append(f"{name}: {type(original).__name__} -> explicit gates ({type(replacement).__name__})")
    return adapted, described
