"""Torch oracle for :mod:`scratch_rnn.regularizers`: Pascanu et al.'s Ω and dΩ/dθ by float64 autograd.

An independent unroll: the weights are copied from ``model.state_dict()``, the RNN is run step by step in torch
(nothing here calls ``torch.nn.RNN`` or the scratch code), δ_t = dL/dh_t is taken by autograd from the same
cotangents the scratch backward was given (L = Σ_t ⟨grad_output_t, h_t⟩ + ⟨grad_h_n, h_n⟩), then held
constant (``detach``) as the definition requires, and Ω is differentiated by autograd. The exact form takes
δ_t J_t as autograd's vector-Jacobian product of h_t w.r.t. h_{t-1} (double backward finds the f'' path); the
code form writes it as the authors do, (δ_t ⊙ f'(a_t)) W_hh with f'(a_t) from the pre-activation (1 - tanh²(a),
[a > 0]), the states detached. Returned under the scratch names:
``{"omega": float, "grads": {name: ndarray}, "delta": (T, B, H) ndarray}``.

The switches are for the suite's mutation checks: ``detach_delta=False`` lets gradient flow through δ (not
the definition of either form); ``detach_states=False`` lets the code form's gradient through the states.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CODE_BOUND = 1e-20  # RNN.py l. 67, state['bound'] (restated, not imported from the scratch code)


def _time_major(model, a):
    a = np.asarray(a, dtype=np.float64)
    return a.transpose(1, 0, 2) if model.batch_first else a


def omega_twin(
    model,
    x,
    h0=None,
    grad_output=None,
    grad_h_n=None,
    *,
    form="exact",
    steps=None,
    detach_delta=True,
    detach_states=True,
) -> dict:
    """Ω of ``form`` ("exact" or "code") and its gradient for ``model``'s weights on input ``x``.

    steps: "sum" (Σ over steps of the batch mean) or "mean" (the mean over the terms that count); default the
    form's own (exact: "sum", code: "mean").

    model: a single-layer unidirectional scratch RNN (only its weights and flags are read); x, h0,
    grad_output, grad_h_n: what its forward and backward were given, in its layout (None: zero).
    """
    p = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in model.state_dict().items()}
    xt = torch.tensor(_time_major(model, x))  # (T, B, I)
    T, B = xt.shape[:2]
    H = model.hidden_size
    h = torch.zeros(B, H, dtype=torch.float64) if h0 is None else torch.tensor(np.asarray(h0, dtype=np.float64)[0])
    act = torch.tanh if model.nonlinearity == "tanh" else torch.relu
    pre, states = [], []
    for t in range(T):
        a = xt[t] @ p["weight_ih_l0"].T + h @ p["weight_hh_l0"].T
        if model.bias:
            a = a + p["bias_ih_l0"] + p["bias_hh_l0"]
        h = act(a)
        pre.append(a)
        states.append(h)

    loss = torch.zeros((), dtype=torch.float64)
    if grad_output is not None:
        loss = loss + (torch.stack(states) * torch.tensor(_time_major(model, grad_output))).sum()
    if grad_h_n is not None:
        loss = loss + (states[-1] * torch.tensor(np.asarray(grad_h_n, dtype=np.float64)[0])).sum()
    delta: Sequence[torch.Tensor] = torch.autograd.grad(
        loss, states, retain_graph=True, create_graph=not detach_delta, allow_unused=True, materialize_grads=True
    )
    if detach_delta:
        delta = [d.detach() for d in delta]

    terms, counted = [], []
    if form not in ("exact", "code"):
        raise ValueError(f"form: expected 'exact' or 'code', got {form!r}")
    steps = steps or ("sum" if form == "exact" else "mean")
    first = 1 if form == "exact" else 0
    for t in range(first, T):
        if form == "exact":
            # δ_t J_t = δ_t ∂h_t/∂h_{t-1} as a vector-Jacobian product through the unroll itself, kept in the
            # graph (create_graph): its dependence on W_hh and, through f'(a_t), on everything upstream of
            # a_t is autograd's, not a formula's
            v = torch.autograd.grad(states[t], states[t - 1], grad_outputs=delta[t], create_graph=True)[0]
            nd = torch.linalg.vector_norm(delta[t], dim=1)  # (B,)
            keep = nd != 0
            r = torch.linalg.vector_norm(v, dim=1) / torch.where(keep, nd, torch.ones_like(nd))
            terms.append(torch.where(keep, (r - 1) ** 2, torch.zeros_like(r)))
            counted.append(keep.to(torch.float64))
        else:  # the authors' expression (RNN.py l. 194-209), the states held constant unless asked
            a = pre[t].detach() if detach_states else pre[t]
            slope = 1 - torch.tanh(a) ** 2 if model.nonlinearity == "tanh" else (a > 0).to(torch.float64)
            v = (delta[t] * slope) @ p["weight_hh_l0"]  # δ_t J_t, (B, H)
            num, den = (v**2).sum(1), (delta[t] ** 2).sum(1)
            keep = den >= CODE_BOUND
            q = torch.where(keep, num / torch.where(keep, den, torch.ones_like(den)), torch.ones_like(den))
            terms.append((q - 1) ** 2)
            counted.append(keep.to(torch.float64))

    if not terms:
        omega = torch.zeros((), dtype=torch.float64)
    elif steps == "sum":  # every sequence counts in B, a term that does not count adds 0
        omega = torch.stack(terms).sum() / B
    else:  # the mean over the terms that count
        n = torch.stack(counted).sum()
        omega = torch.stack(terms).sum() / n if n > 0 else torch.zeros((), dtype=torch.float64)
    names = list(p)
    g: Sequence[torch.Tensor]
    if omega.requires_grad:
        g = torch.autograd.grad(omega, [p[k] for k in names], allow_unused=True, materialize_grads=True)
    else:
        g = [torch.zeros_like(p[k]) for k in names]
    return {
        "omega": float(omega.detach()),
        "grads": {k: gi.detach().numpy() for k, gi in zip(names, g)},
        "delta": torch.stack([d.detach() for d in delta]).numpy(),
    }
