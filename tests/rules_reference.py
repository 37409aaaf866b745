"""A slow, obviously correct referee for the propagation rules (GIM, RelP, plain gradients).

The HF model's forward written out head by head from its own modules' weights (GPT-2 and Llama
layouts), each receiver input (head ``h``'s q, k or v input, each MLP's input, the logits' input)
being the residual stream plus its own zero "probe", so the probe's gradient is the gradient of
that receiver alone.  The rules enter through ``detach()`` tricks, written independently of the
engine's autograd functions:

- a gradient scaled by ``s``:  ``x * s + (x * (1 - s)).detach()``;
- a frozen norm: its standard deviation / RMS ``.detach()``-ed;
- a tempered softmax: ``p.detach() + T * softmax(x / T) - (T * softmax(x / T)).detach()``;
- the identity rule: ``x * (act(x) / x).detach()``.

Edge scores are then ``sum (reference_s - clean_s) * grad_r`` per edge, from their definition.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from circuits.engine.rules import BackwardRules


def _scaled(x, s):
    return x if s == 1.0 else x * s + (x * (1 - s)).detach()


def _softmax(x, T):
    p = x.softmax(-1)
    if T == 1.0:
        return p
    t = T * (x / T).softmax(-1)
    return p.detach() + t - t.detach()


class Model:
    """The HF model's weights in a per-head layout, and the forward written out."""

    def __init__(self, hf):
        self.hf = hf
        self.llama = hasattr(hf, "model")
        cfg = hf.config
        self.H = cfg.num_attention_heads
        self.d = cfg.hidden_size
        self.e = self.d // self.H
        self.L = cfg.num_hidden_layers
        self.Hkv = getattr(cfg, "num_key_value_heads", None) or self.H

    def layers(self):
        return self.hf.model.layers if self.llama else self.hf.transformer.h

    def norm(self, module, x, frozen):
        if self.llama:
            rms = (x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon).sqrt()
            return x / (rms.detach() if frozen else rms) * module.weight
        xc = x - x.mean(-1, keepdim=True)
        std = (xc.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
        return xc / (std.detach() if frozen else std) * module.weight + module.bias

    def qkv_weights(self, layer, kind, h):
        """(W [d, e], b [e] or 0) of head ``h``'s query, key or value (k, v: its key-value head)."""
        e = self.e
        if self.llama:
            attn = layer.self_attn
            proj = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}[kind]
            j = h if kind == "q" else h // (self.H // self.Hkv)
            W = proj.weight[j * e:(j + 1) * e].T
            b = proj.bias[j * e:(j + 1) * e] if proj.bias is not None else 0.0
            return W, b
        off = "qkv".index(kind) * self.d + h * e
        return layer.attn.c_attn.weight[:, off:off + e], layer.attn.c_attn.bias[off:off + e]

    def out_weight(self, layer, h):
        e = self.e
        if self.llama:
            return layer.self_attn.o_proj.weight[:, h * e:(h + 1) * e].T, 0.0
        return layer.attn.c_proj.weight[h * e:(h + 1) * e], layer.attn.c_proj.bias

    def mlp(self, layer, x, r: BackwardRules):
        def act(z, fn):
            y = fn(z)
            return z * (y / z).detach() if r.act_identity else y

        if self.llama:
            m = layer.mlp
            hidden = _scaled(act(m.gate_proj(x), F.silu), r.gate_scale) * _scaled(m.up_proj(x), r.up_scale)
            return m.down_proj(hidden)
        m = layer.mlp
        hidden = act(x @ m.c_fc.weight + m.c_fc.bias, lambda z: F.gelu(z, approximate="tanh"))
        return hidden @ m.c_proj.weight + m.c_proj.bias

    def forward(self, tokens, rules: BackwardRules, probes: Dict[str, torch.Tensor] | None = None):
        """(logits [b, p, V], sender outputs by name)."""
        r, probes = rules, probes or {}
        b, p = tokens.shape
        if self.llama:
            resid = self.hf.model.embed_tokens(tokens)
            pos = torch.arange(p)[None]
            cos, sin = self.hf.model.rotary_emb(resid, pos)
        else:
            resid = self.hf.transformer.wte(tokens) + self.hf.transformer.wpe(torch.arange(p))[None]
        outs = {"input": resid}
        mask = torch.ones(p, p, dtype=torch.bool).tril()
        for l, layer in enumerate(self.layers()):
            ln1 = layer.input_layernorm if self.llama else layer.ln_1
            total = 0.0
            for h in range(self.H):
                qkv = {}
                for kind in "qkv":
                    x = self.norm(ln1, resid + probes.get(f"a{l}.h{h}<{kind}>", 0.0), r.freeze_norm)
                    W, bias = self.qkv_weights(layer, kind, h)
                    qkv[kind] = x @ W + bias  # [b, p, e]
                q, k, v = qkv["q"], qkv["k"], qkv["v"]
                if self.llama:
                    q = q * cos + torch.cat([-q[..., self.e // 2:], q[..., :self.e // 2]], -1) * sin
                    k = k * cos + torch.cat([-k[..., self.e // 2:], k[..., :self.e // 2]], -1) * sin
                q, k, v = _scaled(q, r.q_scale), _scaled(k, r.k_scale), _scaled(v, r.v_scale)
                scores = (q @ k.transpose(1, 2) / math.sqrt(self.e)).masked_fill(~mask, float("-inf"))
                W_O, b_O = self.out_weight(layer, h)
                out = _softmax(scores, r.softmax_temperature) @ v @ W_O
                outs[f"a{l}.h{h}"] = out
                total = total + out
            resid = resid + total + b_O
            ln2 = layer.post_attention_layernorm if self.llama else layer.ln_2
            out = self.mlp(layer, self.norm(ln2, resid + probes.get(f"m{l}", 0.0), r.freeze_norm), r)
            outs[f"m{l}"] = out
            resid = resid + out
        lnf = self.hf.model.norm if self.llama else self.hf.transformer.ln_f
        logits = self.hf.lm_head(self.norm(lnf, resid + probes.get("logits", 0.0), r.freeze_norm))
        return logits, outs

    def receivers(self):
        out = [f"a{l}.h{h}<{k}>" for l in range(self.L) for h in range(self.H) for k in "qkv"]
        return out + [f"m{l}" for l in range(self.L)] + ["logits"]

    def senders_before(self, receiver: str):
        """The senders that feed ``receiver`` (everything earlier; a layer's heads feed its MLP)."""
        out = ["input"]
        last = self.L if receiver == "logits" else int(receiver[1:].split(".")[0].split("<")[0])
        for l in range(last):
            out += [f"a{l}.h{h}" for h in range(self.H)] + [f"m{l}"]
        if receiver.startswith("m"):
            out += [f"a{last}.h{h}" for h in range(self.H)]
        return out


def edge_scores(hf, data, metric: Callable, rules: BackwardRules) -> Dict[str, float]:
    """Edge name -> ``sum (corrupted_s - clean_s) . d mean-metric / d input_r`` under ``rules``."""
    model = Model(hf)
    rows = torch.arange(len(data))
    rows = rows if data.answer_pos.ndim == 1 else rows[:, None]
    with torch.no_grad():
        _, clean = model.forward(data.clean, BackwardRules())
        _, corrupted = model.forward(data.corrupted, BackwardRules())
    probes = {name: torch.zeros(*data.clean.shape, model.d, dtype=torch.float64, requires_grad=True)
              for name in model.receivers()}
    logits, _ = model.forward(data.clean, rules, probes)
    metric(logits[rows, data.answer_pos], data).mean().backward()
    out = {}
    for r in model.receivers():
        for s in model.senders_before(r):
            out[f"{s}->{r}"] = float(((corrupted[s] - clean[s]) * probes[r].grad).sum())
    return out
