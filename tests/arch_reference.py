"""A slow, independent referee for every architecture family: plain PyTorch hooks on the Hugging Face modules.

The engine computes each family from ``ModelWeights``; this module never reads those.  It runs the HF
model itself (float64, eager attention) and changes only what an edge changes:

* **senders** are captured where they enter the computation: ``input`` is the residual stream entering
  layer 0; a head's output is its slice of the attention's output projection (``z_h @ W_O[h]``, read
  from the projection's input); an MLP's output is what the layer adds for it (after its own
  post-norm where the family has one).
* **receivers**: each head's q, k and v are recomputed by the HF modules (its input norm, projection,
  and for OLMo 2 the q/k norm over the whole projection) from that receiver's own residual stream,
  and put into the projection's output slice of that head; an MLP's input and the final norm's
  input are replaced in place.  Grouped key/value heads are first expanded to one per query head
  (an exact rewrite of the same model), so each query head has its own k and v.
* **an edge** ``s -> r`` with weight ``alpha[s, r]`` moves receiver ``r``'s residual stream by
  ``alpha * D_s``, where ``D_s`` is the sender's change (a fixed tensor, or ``reference - current``
  for patching); where the sender's layer has a post-attention norm (OLMo 2, Gemma 2/3), that norm
  is recomputed by the HF module on the layer's attention output with the receiver's heads moved:
  ``N(A + sum_h alpha[h, r] D_h) - N(A)``.

Patching an edge set is ``alpha = 1`` on its edges; EAP's scores are ``d metric / d alpha`` at
``alpha = 0`` with ``D`` = reference - clean (autograd through the HF modules, the norm included);
EAP-IG averages that gradient over runs whose layer-0 input is interpolated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F

POST_NORM_FAMILIES = ("olmo2", "gemma2", "gemma3_text")


@dataclass
class Layer:
    """The HF modules of one decoder layer that the referee hooks."""

    block: torch.nn.Module
    attn: torch.nn.Module
    out_proj: torch.nn.Module
    attn_norm: Optional[torch.nn.Module]  # before attention (None: OLMo 2)
    post_attn_norm: Optional[torch.nn.Module]  # after attention, before the residual add
    mlp_entry: torch.nn.Module  # the first module of the MLP's path: its input is the MLP receiver's stream
    mlp_exit: torch.nn.Module  # its output is what the MLP adds to the residual stream


class Modules:
    """Where each family keeps its modules (read from the HF source of each decoder layer)."""

    def __init__(self, model):
        cfg = model.config
        self.kind = cfg.model_type
        self.neox = self.kind == "gpt_neox"
        body = model.gpt_neox if self.neox else model.model
        self.final_norm = body.final_layer_norm if self.neox else body.norm
        self.parallel = self.neox and cfg.use_parallel_residual
        self.H = cfg.num_attention_heads
        self.e = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        post = self.kind in POST_NORM_FAMILIES
        self.layers = []
        for block in body.layers:
            attn = block.attention if self.neox else block.self_attn
            entry = {"olmo2": "mlp", "gemma2": "pre_feedforward_layernorm", "gemma3_text": "pre_feedforward_layernorm"}
            self.layers.append(Layer(
                block=block, attn=attn, out_proj=attn.dense if self.neox else attn.o_proj,
                attn_norm=getattr(block, "input_layernorm", None),
                post_attn_norm=block.post_attention_layernorm if post else None,
                mlp_entry=getattr(block, entry.get(self.kind, "post_attention_layernorm")),
                mlp_exit=getattr(block, "post_feedforward_layernorm", None) or block.mlp))

    @property
    def n_senders(self) -> int:
        return 1 + len(self.layers) * (self.H + 1)

    def head(self, layer: int, h: int) -> int:
        return 1 + layer * (self.H + 1) + h

    def mlp(self, layer: int) -> int:
        return 1 + layer * (self.H + 1) + self.H

    def receivers(self) -> List[tuple]:
        """(layer, kind, head) in the graph's receiver order, kind in q, k, v, mlp, logits."""
        out = []
        for layer in range(len(self.layers)):
            out += [(layer, x, h) for x in "qkv" for h in range(self.H)] + [(layer, "mlp", None)]
        return out + [(len(self.layers), "logits", None)]

    def n_inputs(self, layer: int, kind: str) -> int:
        """How many senders reach a receiver: those computed before its input (a parallel layer's MLP reads
        the layer's input, so not its own heads)."""
        if kind == "logits":
            return self.n_senders
        if kind == "mlp" and not self.parallel:
            return self.mlp(layer)
        return self.head(layer, 0)


def expand_kv_heads(model):
    """The same model with one key/value head per query head (GQA's shared heads repeated): a new HF model."""
    cfg = model.config
    H, K = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    if H == K:
        return model
    group = H // K
    e = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            value = value.view(K, e, *value.shape[1:]).repeat_interleave(group, 0).reshape(H * e, *value.shape[1:])
        elif name.endswith("k_norm.weight") and value.numel() == K * e and K > 1:  # over the whole projection
            value = value.view(K, e).repeat_interleave(group, 0).reshape(-1)
        state[name] = value
    wide = type(model)(type(cfg).from_dict({**cfg.to_dict(), "num_key_value_heads": H}))
    wide.load_state_dict(state)
    return wide.to(dtype=next(model.parameters()).dtype).eval()


def _layer_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


class Referee:
    """Runs the (key/value-expanded) HF model with per-receiver inputs; see the module's docstring."""

    def __init__(self, model):
        self.model = expand_kv_heads(model)
        self.m = Modules(self.model)

    # ------------------------------------------------------------------ one run
    def run(self, tokens: torch.Tensor, alpha: torch.Tensor, *, delta: Optional[torch.Tensor] = None,
            reference: Optional[torch.Tensor] = None, layer0: Optional[torch.Tensor] = None,
            senders: Optional[list] = None) -> torch.Tensor:
        """Logits [b, p, V] with receiver ``r`` moved by its edges ``alpha[:, r]`` (see the module docstring):
        ``D = delta`` [S, b, p, d], or ``reference - current`` with ``reference`` [S, b, p, d].  ``layer0``
        replaces the residual stream entering layer 0; ``senders`` (a list) receives this run's senders."""
        m = self.m
        outs: list = [None] * m.n_senders  # this run's sender outputs
        attn_out: Dict[int, torch.Tensor] = {}  # per post-norm layer: the attention output before its norm
        resid: Dict[int, torch.Tensor] = {}
        receivers = m.receivers()
        column = {rec: i for i, rec in enumerate(receivers)}

        def change(layer: int, kind: str, head: Optional[int]) -> torch.Tensor:
            r = column[(layer, kind, head)]
            n = m.n_inputs(layer, kind)
            total = torch.zeros_like(outs[0])
            if not alpha.requires_grad and not bool((alpha[:n, r] != 0).any()):
                return total
            D = [delta[s] if delta is not None else reference[s] - outs[s] for s in range(n)]
            post = {l: idx for l, idx in enumerate(m.layers) if idx.post_attn_norm is not None}
            for s in range(n):
                l = (s - 1) // (m.H + 1)
                if s == 0 or s == m.mlp(l) or l not in post:
                    if alpha.requires_grad or bool(alpha[s, r] != 0):
                        total = total + alpha[s, r] * D[s]
            for l in post:
                heads = range(m.head(l, 0), m.head(l, 0) + m.H)
                if heads[0] >= n or not (alpha.requires_grad or bool((alpha[heads[0]:heads[-1] + 1, r] != 0).any())):
                    continue
                A = attn_out[l]
                moved = A + sum(alpha[s, r] * D[s] for s in heads)
                norm = m.layers[l].post_attn_norm
                total = total + norm.forward(moved) - norm.forward(A)
            return total

        hooks = []

        def on(module, fn, pre=False, kwargs=False):
            if pre:
                hooks.append(module.register_forward_pre_hook(fn, with_kwargs=kwargs))
            else:
                hooks.append(module.register_forward_hook(fn))

        def layer_in(i):
            def hook(module, args, kwargs):
                x = _layer_input(args, kwargs)
                if i == 0:
                    if layer0 is not None:
                        x = layer0
                    outs[0] = x
                resid[i] = x
                if args:
                    return (x, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": x}
            return hook

        def projections(i, L: Layer):
            """q, k, v of each head from its own receiver's stream, through the HF modules."""
            norm = (lambda x: L.attn_norm.forward(x)) if L.attn_norm is not None else (lambda x: x)
            H, e = m.H, m.e
            streams = {x: [resid[i] + change(i, x, h) for h in range(H)] for x in "qkv"}
            if m.neox:
                qkv = L.attn.query_key_value
                per = {x: [qkv.forward(norm(s)).view(*s.shape[:2], H, 3, e) for s in streams[x]] for x in "qkv"}
                return torch.stack([torch.stack([per[x][h][:, :, h, j] for j, x in enumerate("qkv")], 2)
                                    for h in range(H)], 2).reshape(*streams["q"][0].shape[:2], -1)
            out = {}
            for x in "qkv":
                proj = getattr(L.attn, f"{x}_proj")
                full_norm = getattr(L.attn, f"{x}_norm", None) if m.kind == "olmo2" else None
                parts = []
                for h, s in enumerate(streams[x]):
                    y = proj.forward(norm(s))
                    if full_norm is not None:  # OLMo 2: the norm over the whole projection of this head's input
                        y = full_norm.forward(y)
                    parts.append(y[..., h * e:(h + 1) * e])
                out[x] = torch.cat(parts, -1)
            return out

        def replace_output(value_fn):
            return lambda module, args, output: value_fn()

        def per_layer(i, L: Layer):
            cache = {}

            def values():
                if "v" not in cache:
                    cache["v"] = projections(i, L)
                return cache["v"]

            if m.neox:
                on(L.attn.query_key_value, lambda mod, a, o: values())
            else:
                for x in "qkv":
                    point = getattr(L.attn, f"{x}_norm") if (m.kind == "olmo2" and x != "v") else getattr(L.attn, f"{x}_proj")
                    on(point, (lambda x: lambda mod, a, o: values()[x])(x))

            def capture_heads(mod, args):
                z = args[0]
                W = L.out_proj.weight
                for h in range(m.H):
                    sl = slice(h * m.e, (h + 1) * m.e)
                    outs[m.head(i, h)] = F.linear(z[..., sl], W[:, sl])
                cache.clear()
            on(L.out_proj, capture_heads, pre=True)
            if L.post_attn_norm is not None:
                on(L.out_proj, lambda mod, a, o: attn_out.__setitem__(i, o))

            def mlp_in(mod, args):
                return (args[0] + change(i, "mlp", None), *args[1:])
            on(L.mlp_entry, mlp_in, pre=True)

            def mlp_out(mod, args, output):
                outs[m.mlp(i)] = output
            on(L.mlp_exit, mlp_out)

        for i, L in enumerate(m.layers):
            on(L.block, layer_in(i), pre=True, kwargs=True)
            per_layer(i, L)
        on(m.final_norm, lambda mod, args: (args[0] + change(len(m.layers), "logits", None),), pre=True)
        try:
            logits = self.model(tokens).logits
        finally:
            for h in hooks:
                h.remove()
        if senders is not None:
            senders.extend(outs)
        return logits

    # ------------------------------------------------------------------ what the tests compare
    def senders(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every sender's output on ``tokens`` [S, b, p, d] (in the graph's order)."""
        out: list = []
        with torch.no_grad():
            self.run(tokens, torch.zeros(self.m.n_senders, len(self.m.receivers()), dtype=torch.float64), delta=None,
                     reference=None, senders=out)
        return torch.stack(out).detach()

    def patched(self, tokens, reference: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Logits with the edges of the bool mask ``edges`` [S, R] carrying ``reference`` [S, b, p, d]."""
        with torch.no_grad():
            return self.run(tokens, edges.to(torch.float64), reference=reference)

    def attribution(self, tokens, loss: Callable, delta: torch.Tensor, layer0s: Optional[list] = None) -> torch.Tensor:
        """d loss / d alpha at alpha = 0 [S, R], averaged over runs whose layer-0 input is each of ``layer0s``
        (EAP-IG) or over the one plain run (EAP)."""
        total = torch.zeros(self.m.n_senders, len(self.m.receivers()), dtype=torch.float64)
        points = layer0s or [None]
        for x0 in points:
            alpha = torch.zeros_like(total, requires_grad=True)
            with torch.enable_grad():
                loss(self.run(tokens, alpha, delta=delta, layer0=x0)).backward()
            total += alpha.grad / len(points)
        return total

    def node_effects(self, tokens, corrupted, loss: Callable) -> torch.Tensor:
        """Activation patching [S]: ``loss`` with one sender's output (all its edges) at its corrupted value,
        minus the clean ``loss``, by plain hooks: a head's slice of the output projection's input, an MLP's
        added output, the input embedding."""
        m = self.m
        with torch.no_grad():
            clean_logits = self.model(tokens).logits
            cache: dict = {}
            hooks = [L.out_proj.register_forward_pre_hook((lambda i: lambda mod, a: cache.__setitem__(("z", i), a[0]))(i))
                     for i, L in enumerate(m.layers)]
            hooks += [L.mlp_exit.register_forward_hook((lambda i: lambda mod, a, o: cache.__setitem__(("m", i), o))(i))
                      for i, L in enumerate(m.layers)]
            hooks.append(m.layers[0].block.register_forward_pre_hook(
                lambda mod, a, k: cache.__setitem__("x0", _layer_input(a, k)), with_kwargs=True))
            try:
                self.model(corrupted)
            finally:
                for h in hooks:
                    h.remove()
            base = loss(clean_logits)
            effects = torch.zeros(m.n_senders, dtype=torch.float64)

            def patched(module, fn, pre, kwargs=False):
                h = (module.register_forward_pre_hook(fn, with_kwargs=kwargs) if pre else module.register_forward_hook(fn))
                try:
                    return loss(self.model(tokens).logits) - base
                finally:
                    h.remove()

            def x0(mod, args, kwargs):
                return ((cache["x0"], *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": cache["x0"]})
            effects[0] = patched(m.layers[0].block, x0, True, True)
            for i, L in enumerate(m.layers):
                for h in range(m.H):
                    def head(mod, args, i=i, h=h):
                        z = args[0].clone()
                        z[..., h * m.e:(h + 1) * m.e] = cache[("z", i)][..., h * m.e:(h + 1) * m.e]
                        return (z,)
                    effects[m.head(i, h)] = patched(L.out_proj, head, True)
                effects[m.mlp(i)] = patched(L.mlp_exit, lambda mod, a, o, i=i: cache[("m", i)], False)
        return effects


def load_float64(family: str, folder, tokenizer):
    """Write ``family``'s tiny checkpoint to ``folder`` and load it back in float64 with eager attention."""
    from transformers import AutoModelForCausalLM

    from circuits.models.tiny import write_checkpoint

    write_checkpoint(family, folder, tokenizer)
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64, attn_implementation="eager").eval()


def engine_of(model):
    from circuits.engine.engine import GraphEngine
    from circuits.models.hf_weights import hf_weights
    from circuits.models.weights import cast_weights

    return GraphEngine(cast_weights(hf_weights(model), dtype=torch.float64))


def rel(a: torch.Tensor, b: torch.Tensor) -> tuple:
    """(max |a - b|, max |b|)."""
    return float((a - b).abs().max()), float(b.abs().max())


TOL = 1e-4  # of the largest value: HF computes RMSNorm, rotary angles (and Gemma's norms) in float32 even in float64


class ArchChecks:
    """The five checks of one family; a test module subclasses it with ``family = ...``."""

    family: str = ""
    features: Callable = staticmethod(lambda w: True)  # the family's features, visible in the engine's weights

    @pytest.fixture(scope="class")
    def case(self, tmp_path_factory, gpt2_tok):
        from circuits.tasks.greater_than import GreaterThan

        torch.set_num_threads(1)
        folder = tmp_path_factory.mktemp(self.family)
        model = load_float64(self.family, folder, gpt2_tok)
        model.folder = folder
        task = GreaterThan()
        data = task.build(gpt2_tok, n=4, seed=1)
        assert data.clean.shape[1] > 4  # longer than the sliding windows
        return model, engine_of(model), Referee(model), task, data

    @staticmethod
    def loss(task, data):
        from circuits.data.task import answer_logits

        return lambda logits: task.metric(answer_logits(logits, data), data).mean()

    def test_logits_match_the_hf_model(self, case):
        from circuits.data.task import answer_logits

        model, engine, _, task, data = case
        assert self.features(engine.w)
        with torch.no_grad():
            every = torch.arange(data.clean.shape[1])[None].expand(len(data), -1)
            gap, scale = rel(engine.run(data.clean, every).logits, model(data.clean).logits)
            ref = answer_logits(model(data.clean).logits, data)
        assert gap < TOL * scale, (gap, scale)
        assert torch.allclose(engine.run(data.clean, data.answer_pos).logits, ref, atol=TOL * scale, rtol=0)

    @pytest.mark.slow
    def test_loading_reads_the_same_weights(self, case, circuits_cache):
        """``load_model`` (TransformerLens's bridge around the HF model) and ``from_model`` (config check, logit
        check) give the engine the same weights as the plain HF model."""
        import dataclasses

        from transformers import AutoModelForCausalLM

        from circuits.engine.engine import GraphEngine
        from circuits.models import load_model
        from circuits.models.hf_weights import hf_weights

        model = case[0]
        ours = GraphEngine.from_model(load_model(str(model.folder))).w
        plain = hf_weights(AutoModelForCausalLM.from_pretrained(str(model.folder)))
        for f in dataclasses.fields(plain):
            a, b = getattr(ours, f.name), getattr(plain, f.name)
            assert (torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b), f.name

    @pytest.mark.slow
    def test_activation_patching_matches_hooks(self, case):
        from circuits.registry import get_method

        _, engine, referee, task, data = case
        scores = get_method("activation-patching").score(engine, data, task.metric)
        ours = torch.tensor([scores.node_scores[n] for n in engine.graph.sender_names], dtype=torch.float64)
        expected = referee.node_effects(data.clean, data.corrupted, self.loss(task, data))
        gap, scale = rel(ours, expected)
        assert scale > 1e-8 and gap < TOL * scale, (gap, scale)

    def test_eap_matches_hook_gradients(self, case):
        from circuits.registry import get_method

        _, engine, referee, task, data = case
        scores = get_method("eap").score(engine, data, task.metric).edge_scores
        delta = referee.senders(data.corrupted) - referee.senders(data.clean)
        expected = referee.attribution(data.clean, self.loss(task, data), delta)
        gap, scale = rel(scores, expected * engine.graph.valid_mask())
        assert scale > 1e-8 and gap < TOL * scale, (gap, scale)
        assert float(expected[~engine.graph.valid_mask()].abs().max()) < TOL * scale  # no edge the graph lacks

    @pytest.mark.slow
    def test_eap_ig_matches_integrated_hook_gradients(self, case):
        from circuits.registry import get_method
        from circuits.methods.base import MethodOptions

        _, engine, referee, task, data = case
        steps = 3
        scores = get_method("eap-ig").score(engine, data, task.metric, MethodOptions(params={"ig_steps": steps})).edge_scores
        clean, corrupted = referee.senders(data.clean), referee.senders(data.corrupted)
        points = [corrupted[0] + k / steps * (clean[0] - corrupted[0]) for k in range(1, steps + 1)]
        expected = referee.attribution(data.clean, self.loss(task, data), corrupted - clean, points)
        gap, scale = rel(scores, expected * engine.graph.valid_mask())
        assert scale > 1e-8 and gap < TOL * scale, (gap, scale)

    def test_random_patched_edges_match_hooks(self, case):
        from circuits.engine.engine import Patch

        _, engine, referee, task, data = case
        g = engine.graph
        corrupted = engine.run(data.corrupted, data.answer_pos, collect=True).outputs
        every = torch.arange(data.clean.shape[1])[None].expand(len(data), -1)
        gen = torch.Generator().manual_seed(0)
        for fraction in (0.1, 0.5):
            edges = (torch.rand(g.n_senders, g.n_receivers, generator=gen) < fraction) & g.valid_mask()
            ours = engine.run(data.clean, every, patch=Patch(keep=(~edges).to(torch.float64), reference=corrupted)).logits
            theirs = referee.patched(data.clean, referee.senders(data.corrupted), edges)
            gap, scale = rel(ours, theirs)
            assert gap < TOL * scale, (fraction, gap, scale)

    @pytest.mark.slow
    def test_cached_positions_match_a_full_run(self, case):
        """``extend`` (keys and values cached, then one position at a time) gives the full run's logits:
        windows, soft-caps and rotary offsets are counted from the cached positions."""
        _, engine, _, _, data = case
        tokens = data.clean
        p = tokens.shape[1]
        with torch.no_grad():
            full = engine.run(tokens, torch.arange(p)[None].expand(len(data), -1)).logits
            state = engine.extend(tokens[:, :p - 3], keep_state=True).state
            for i in range(p - 3, p):
                step = engine.extend(tokens[:, i:i + 1], state, keep_state=True)
                state = step.state
                gap, scale = rel(step.logits, full[:, i])
                assert gap < 1e-9 * scale, (i, gap, scale)
