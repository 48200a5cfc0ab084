"""The planted bugs of tests/mutation/run_mutants.py: one line of scratch_rnn/ each.

Each mutant: id, file, ``old`` (text that occurs exactly once in the file, or ``nth`` occurrence), ``new``
(its replacement, one line), ``why`` (the bug it stands for) and ``tests`` (the test files the targeted
run uses; ``--full`` lets the whole suite decide for survivors).

``FRESH``: a set written for issue 19 (not the 39 of the issue), of the kind people make in BPTT and
training code. ``GAPS``: the eight gaps the issue's class 9 names, re-planted by hand: each must be
caught by the tests that close it.
"""
from __future__ import annotations

RNN_T = ["tests/test_rnn_torch.py", "tests/test_hidden_grads.py", "tests/test_gated_unroll.py",
         "tests/test_boundary_options.py", "tests/test_rnn_properties.py", "tests/test_perf_paths.py"]
GATED_T = ["tests/test_gated_unroll.py", "tests/test_rnn_torch.py", "tests/test_gated_functional.py",
           "tests/test_gated_loops.py"]
OPTIM_T = ["tests/test_optim.py", "tests/test_trajectories.py"]
TRAIN_T = ["tests/test_train_oracles.py", "tests/test_train_loop.py", "tests/test_tbptt.py", "tests/test_checkpoint.py"]
CKPT_T = ["tests/test_train_oracles.py", "tests/test_checkpoint.py"]
LOSS_T = ["tests/test_losses.py", "tests/test_models.py"]
MODEL_T = ["tests/test_models.py", "tests/test_train_oracles.py"]
LAYER_T = ["tests/test_layers.py", "tests/test_models.py"]
REG_T = ["tests/test_regularizers.py"]
DIAG_T = ["tests/test_diagnostics.py", "tests/test_gradient_experiments.py"]


def M(id, file, old, new, why, tests, nth=None):  # noqa: A002
    m = dict(id=id, file=f"scratch_rnn/{file}", old=old, new=new, why=why, tests=tests)
    if nth is not None:
        m["nth"] = nth
    return m


FRESH = [
    # ---- the Elman BPTT (cells/elman.py, cells/loops.py) and the stack (cells/base.py)
    M("f01", "cells/elman.py", "hs[t + 1, prev_n:n] = h0[prev_n:n]", "hs[t + 1, prev_n:n] = 0",
      "reverse direction with lengths: shorter sequences start from 0, not their h0", RNN_T),
    M("f02", "cells/elman.py", "h_prev = hs[1:] if reverse else hs[:-1]  # the state each step read",
      "h_prev = hs[:-1] if reverse else hs[:-1]  # the state each step read",
      "dW_hh of the reverse direction pairs δ_t with the wrong neighbour state", RNN_T),
    M("f03", "cells/elman.py", "db = d2.sum(axis=0) if bias else None", "db = d2[1:].sum(axis=0) if bias else None",
      "bias gradient drops the first row of the batch-time sum", RNN_T),
    M("f04", "cells/elman.py", "d.dot(w_hh, dh)              # δ_t W_hh", "d.dot(w_hh.T, dh)              # δ_t W_hh",
      "wrong transpose in the recurrent backward", RNN_T),
    M("f05", "cells/elman.py", "states[padding_mask(batch_sizes, B)] = 0",
      "states[padding_mask(batch_sizes + 1, B)] = 0",
      "lengths mask off by one in the forward (padded projections kept)", RNN_T),
    M("f06", "cells/loops.py", "return np.arange(B)[None, :] >= np.asarray(batch_sizes)[:, None]",
      "return np.arange(B)[None, :] > np.asarray(batch_sizes)[:, None]", "padding mask off by one", RNN_T),
    M("r01", "cells/base.py", "batch_sizes = (lengths_sorted[None, :] > np.arange(T)[:, None]).sum(axis=1)",
      "batch_sizes = (lengths_sorted[None, :] >= np.arange(T)[:, None]).sum(axis=1)",
      "batch sizes count one step too many", RNN_T),
    M("r02", "cells/loops.py", "return S[np.asarray(lengths_sorted), np.arange(B)]",
      "return S[np.asarray(lengths_sorted) - 1, np.arange(B)]", "h_n read one step early under lengths", RNN_T),
    M("r03", "cells/base.py", "out[:, :, out_size:][padding_mask(batch_sizes, B)] = 0", "pass",
      "the reverse direction's padded outputs are not zeroed", RNN_T),
    M("r04", "cells/base.py", "return 0.0 if self.dropout >= 1.0 else 1.0 / (1.0 - self.dropout)",
      "return 0.0 if self.dropout >= 1.0 else 1.0 - self.dropout", "inverted dropout scaled by p_keep, not 1/p_keep",
      RNN_T),
    M("r05", "cells/base.py", "                    d_in *= self._dropout_scale()", "                    d_in *= 1.0",
      "the dropout scale forgotten in the backward", RNN_T),
    M("r06", "cells/base.py", "            grad_x = grad_x[:, inv]", "            grad_x = grad_x[:, perm]",
      "input gradient un-sorted with the permutation instead of its inverse", RNN_T),
    M("r07", "cells/base.py", "                    d_in += dx", "                    d_in = dx",
      "bidirectional: the input gradient keeps only the reverse direction's part", RNN_T),
    M("r08", "cells/elman.py", "grads[\"bias_ih\"] = grads[\"bias_hh\"] = db", "grads[\"bias_ih\"] = db",
      "the Elman cell's bias_hh gradient forgotten", RNN_T),
    M("r09", "cells/gru.py", "grads[\"bias_ih\"], grads[\"bias_hh\"] = wg[\"b_ih\"], wg[\"b_hh\"]",
      "grads[\"bias_ih\"], grads[\"bias_hh\"] = wg[\"b_hh\"], wg[\"b_ih\"]", "GRU bias gradients swapped", RNN_T),
    # ---- the gated cells (cells/lstm.py, cells/gru.py)
    M("g01", "cells/lstm.py", "grads[\"w_hr\"] = hidden_grads.reshape(T * B, P).T @ cache[\"m\"].reshape(T * B, H)",
      "grads[\"w_hr\"] = hidden_grads.reshape(T * B, P).T @ cache[\"m\"][::-1].reshape(T * B, H)",
      "LSTM projection gradient pairs g_t with m of the mirrored step", GATED_T),
    M("g02", "cells/gru.py", "b_hh=gh2.sum(axis=0) if bias else None)", "b_hh=gi2.sum(axis=0) if bias else None)",
      "GRU b_hh gradient taken from the input-side gates (differs on n: r ⊙ ...)", GATED_T),
    M("g03", "cells/gru.py", "h_prev = S[1:] if reverse else S[:-1]", "h_prev = S[:-1] if reverse else S[:-1]",
      "GRU dW_hh of the reverse direction reads the wrong neighbour state", GATED_T),
    M("l01", "cells/lstm.py", "np.multiply(k, gt[:, H:2 * H], out=dc)", "np.multiply(k, gt[:, :H], out=dc)",
      "LSTM dc_{t-1} through the input gate instead of the forget gate", GATED_T),
    M("l02", "cells/lstm.py", "np.multiply(dm, tanh_c[t, :n], out=do)", "np.multiply(dm, TD[j, :n], out=do)",
      "LSTM da_o with tanh'(c) instead of tanh(c)", GATED_T),
    M("l03", "cells/gru.py", "np.multiply(da_n, r_all[t, :n], out=dgh[:, 2 * H:])",
      "np.multiply(da_n, z_all[t, :n], out=dgh[:, 2 * H:])", "GRU dgh_n through z instead of r", GATED_T),
    M("l04", "cells/gru.py", "np.multiply(g, z_all[t, :n], out=dh)", "np.multiply(g, OMZ[j, :n], out=dh)",
      "GRU dh_{t-1} through 1 - z instead of z", GATED_T),
    M("l05", "cells/gru.py", "np.subtract(h_prev, nn, out=h)", "np.subtract(nn, h_prev, out=h)",
      "GRU update with the sign of (h_{t-1} - n) flipped", GATED_T),
    M("l06", "cells/lstm.py", "np.multiply(f, c_prev, out=c)", "np.multiply(i, c_prev, out=c)",
      "LSTM cell update with the wrong gate", GATED_T),
    M("l07", "cells/lstm.py", "gg, C_prev[lo:hi], gb[..., :H]", "gg, C[lo:hi], gb[..., :H]",
      "LSTM da_f with c_t instead of c_{t-1} in the forward direction (time index off by one)", GATED_T),
    # ---- optimizers and clipping (optim.py)
    M("o01", "optim.py", "bias_correction1 = 1.0 - beta1 ** step", "bias_correction1 = 1.0 - beta1 ** (step + 1)",
      "Adam's first-moment bias correction one step ahead", OPTIM_T),
    M("o02", "optim.py", "v += (1.0 - beta2) * g * g", "v += (1.0 - beta2) * g * abs(g)",
      "Adam's second moment with g·|g| (wrong sign for negative gradients)", OPTIM_T),
    M("o03", "optim.py", "buf += (1.0 - h[\"dampening\"]) * g", "buf += g", "SGD momentum ignores dampening", OPTIM_T),
    M("o04", "optim.py", "g = g + h[\"momentum\"] * buf if h[\"nesterov\"] else buf",
      "g = buf if h[\"nesterov\"] else buf", "Nesterov momentum treated as plain momentum", OPTIM_T),
    M("o05", "optim.py", "clr = h[\"lr\"] / (1 + (step - 1) * h[\"lr_decay\"])",
      "clr = h[\"lr\"] / (1 + step * h[\"lr_decay\"])", "Adagrad's lr decay one step ahead", OPTIM_T),
    M("o06", "optim.py", "avg = np.sqrt(sq - ga * ga)", "avg = np.sqrt(sq + ga * ga)",
      "centered RMSprop adds the squared mean instead of subtracting it", OPTIM_T),
    M("o07", "optim.py", "p *= 1.0 - lr * wd", "p *= 1.0 - wd", "AdamW's decoupled decay without the lr", OPTIM_T),
    M("o08", "optim.py", "coef = coef if math.isnan(coef) else min(coef, 1.0)",
      "coef = coef if math.isnan(coef) else max(coef, 1.0)", "norm clipping scales small gradients up", OPTIM_T),
    M("o09", "optim.py", "np.clip(g, -clip_value, clip_value, out=g)", "np.clip(g, 0, clip_value, out=g)",
      "value clipping zeroes negative entries", OPTIM_T),
    # ---- the training loop (train.py) and checkpoints (checkpoint.py)
    M("t01", "train.py", "self.set_lr(cfg.lr * cfg.lr_decay ** self.epoch)",
      "self.set_lr(cfg.lr * cfg.lr_decay ** (self.epoch + 1))", "lr decay applied from the first epoch", TRAIN_T),
    M("t02", "train.py", "if cfg.patience is not None and self.stale_epochs >= cfg.patience:",
      "if cfg.patience is not None and self.stale_epochs > cfg.patience:", "early stopping one epoch late", TRAIN_T),
    M("t03", "train.py", "cl = np.clip(lengths - start, 0, stop - start)",
      "cl = np.clip(lengths - start - 1, 0, stop - start)", "TBPTT chunk lengths off by one", TRAIN_T),
    M("t04", "train.py", "s[:, rows] = f  # carried on", "s[:, rows] = 0 * f  # carried on",
      "TBPTT state not carried into the next chunk", TRAIN_T),
    M("t05", "train.py", "self.loss += float(loss) * n", "self.loss += float(loss)",
      "epoch loss a plain mean of step losses, not sample-weighted", TRAIN_T),
    M("t06", "train.py", "bound = cfg.divergence_factor * max(start, 1.0)",
      "bound = cfg.divergence_factor * min(start, 1.0)", "divergence bound ignores a first loss above 1", TRAIN_T),
    M("t07", "train.py", "self.batch_in_epoch = int(meta[\"batch_in_epoch\"])", "self.batch_in_epoch = 0",
      "resume restarts the epoch from its first batch", CKPT_T),
    M("t08", "train.py", "history_loss=np.array([r.loss for r in h], dtype=np.float64)",
      "history_loss=np.array([r.grad_norm for r in h], dtype=np.float64)", "checkpoint saves the wrong history field",
      CKPT_T),
    M("t09", "train.py", "self.stale_epochs = int(meta[\"stale_epochs\"])", "self.stale_epochs = 0",
      "resume forgets the patience count", CKPT_T),
    M("t10", "train.py", "norm = clip_grad_norm_(grads, cfg.clip_norm, 2.0)",
      "norm = (clip_grad_norm_(grads, cfg.clip_norm, 2.0), total_norm(grads, 2))[1]",
      "the recorded gradient norm is the clipped one", TRAIN_T),
    M("c01", "checkpoint.py", "step_count=sd[\"step_count\"]", "step_count=0",
      "the optimizer's step count not saved", CKPT_T),
    M("c02", "checkpoint.py", "state=state, step_count=o[\"step_count\"])", "state=state, step_count=0)",
      "the optimizer's step count not restored", CKPT_T),
    # ---- losses, the model, the layers (losses.py, models.py, layers.py)
    M("x01", "losses.py", "norm = 2.0 / x.size if (reduction == \"mean\" and x.size) else 2.0",
      "norm = 1.0 / x.size if (reduction == \"mean\" and x.size) else 2.0", "MSE gradient missing its factor 2",
      LOSS_T),
    M("x02", "losses.py", "w = np.full(t.size, g / dt.type(count) if count else 0, dtype=dt)",
      "w = np.full(t.size, g / dt.type(t.size) if count else 0, dtype=dt)",
      "cross-entropy mean gradient counts ignored targets", LOSS_T),
    M("x03", "losses.py", "grad = grad / x.dtype.type(x.size)", "grad = grad / x.dtype.type(x.shape[0])",
      "BCE mean gradient divided by the batch, not the element count", LOSS_T),
    M("m01", "models.py", "d_out *= valid_mask(lengths, B, T)[:, :, None]", "d_out *= 1",
      "mean pooling's gradient leaks into padded steps", MODEL_T),
    M("m02", "models.py", "return out[rows, lengths - 1], None", "return out[rows, -1], None",
      "last pooling reads the padded last step", MODEL_T),
    M("m03", "models.py",
      "d_rnn_out = d_feats * valid_mask(cache[\"lengths\"], cache[\"B\"], cache[\"T\"])[:, :, None]",
      "d_rnn_out = d_feats", "per-step task: gradient of padded steps not masked", MODEL_T),
    M("y01", "layers.py", "grads[\"bias\"] = g2.sum(axis=0)  # (out,)", "grads[\"bias\"] = g2.mean(axis=0)  # (out,)",
      "Linear bias gradient averaged instead of summed", LAYER_T),
    M("y02", "layers.py", "keep = flat_idx != self.padding_idx", "keep = flat_idx != 0",
      "Embedding skips row 0 instead of padding_idx", LAYER_T),
    # ---- diagnostics and the regularizer
    M("q01", "regularizers.py", "v = (u.reshape(T * B, H) @ w_hh).reshape(T, B, H)",
      "v = (u.reshape(T * B, H) @ w_hh.T).reshape(T, B, H)", "Ω's δ_t J_t with the wrong transpose", REG_T),
    M("q02", "regularizers.py", "slopes = activation_derivative(hs[1:], rnn.nonlinearity)",
      "slopes = activation_derivative(hs[:-1], rnn.nonlinearity)", "Ω's slopes one step early", REG_T),
    M("q03", "diagnostics.py", "norms[np.arange(T)[:, None] >= lengths[None, :]] = np.nan",
      "norms[np.arange(T)[:, None] > lengths[None, :]] = np.nan", "distance norms: padding mask off by one", DIAG_T),
]

GAPS = [
    M("G1a", "cells/loops.py", "yield min(steps), steps", "yield s, steps",
      "gap 1: a block's first time index taken from its position in the backward order", GATED_T),
    M("G1b", "cells/gru.py", "np.subtract(one, z_all[lo:hi], out=OMZ[:m])",
      "np.subtract(one, z_all[hi - L:hi], out=OMZ[:m])",
      "gap 1: GRU factor block read at the block length (wrong in a partial block only)", GATED_T),
    M("G2", "cells/base.py", "buffers = {k: v[:, :, inv] for k, v in buffers.items()}",
      "buffers = {k: (v[:, :, inv] if k == \"hidden\" else v) for k, v in buffers.items()}",
      "gap 2: LSTM cell_grads left in sorted-row order under unsorted lengths", ["tests/test_gated_unroll.py"]),
    M("G3", "cells/elman.py", "            if flush and i % flush_every == 0:",
      "            if flush and t % flush_every == 0:",
      "gap 3: the flush counted by time index, not loop step, under lengths", ["tests/test_gated_unroll.py"], nth=2),
    M("G4a", "cells/base.py", "self.dropout = check_probability(\"dropout\", dropout)",
      "self.dropout = check_probability(\"dropout\", dropout, below_one=True)",
      "gap 4: dropout=1.0 refused (torch accepts it)", ["tests/test_boundary_options.py"]),
    M("G4b", "cells/base.py", "return 0.0 if self.dropout >= 1.0 else 1.0 / (1.0 - self.dropout)",
      "return 1.0 if self.dropout >= 1.0 else 1.0 / (1.0 - self.dropout)",
      "gap 4: dropout=1.0 with given keep-masks lets the input through", ["tests/test_boundary_options.py"]),
    M("G5a", "regularizers.py", "if record is not None and record.lengths is not None:",
      "if x is not None and record is not None and record.lengths is not None:",
      "gap 5: Ω's lengths guard only when x is given", ["tests/test_boundary_options.py"]),
    M("G5b", "cells/base.py", "ForwardRecord(x_view, None if perm is None else lengths.copy(), batched)",
      "ForwardRecord(x_view, None, batched)", "gap 5: last_forward.lengths never recorded",
      ["tests/test_boundary_options.py"]),
    M("G6a", "checkpoint.py", "state=state, step_count=o[\"step_count\"])", "state=state, step_count=0)",
      "gap 6: the optimizer's step_count not restored", ["tests/test_train_oracles.py"]),
    M("G6b", "train.py", "self.step = int(loaded[\"step\"])", "self.step = int(meta[\"epoch\"])",
      "gap 6: the trainer's step restored from the wrong field", ["tests/test_train_oracles.py"]),
    M("G6c", "train.py", "self.epochs = list(meta[\"epochs\"])", "self.epochs = list(meta[\"epochs\"])[:1]",
      "gap 6: the epoch rows truncated on load", ["tests/test_train_oracles.py"]),
    M("G7a", "train.py", "else value < self.best[\"value\"])", "else value > self.best[\"value\"])",
      "gap 7: select_mode='min' picks the largest", ["tests/test_train_oracles.py"]),
    M("G7b", "train.py", "row[\"train_accuracy\"] = self.correct / self.scored",
      "row[\"train_accuracy\"] = self.correct / max(self.scored, self.samples + 1)",
      "gap 7: train_accuracy's value off (the key is there)", ["tests/test_train_oracles.py"]),
    M("G8a", "train.py", "self.loss += float(loss) * n", "self.loss += float(loss)",
      "gap 8: the epoch sum (shared by TorchTrainer)", ["tests/test_train_oracles.py"]),
    M("G8b", "train.py", "s[:, rows] = f  # carried on", "s[:, rows] = 0 * f  # carried on",
      "gap 8: the TBPTT carry (shared by TorchTrainer)", ["tests/test_train_oracles.py"]),
    M("G8c", "train.py", "self.set_lr(cfg.lr * cfg.lr_decay ** self.epoch)",
      "self.set_lr(cfg.lr * cfg.lr_decay ** (self.epoch + 1))", "gap 8: the lr decay (shared by TorchTrainer)",
      ["tests/test_train_oracles.py"]),
]

SETS = {"fresh": FRESH, "gaps": GAPS}
