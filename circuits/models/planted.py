"""Planted-circuit models: small GPT-2s whose greater-than circuit we build by hand.

They are the ground truth for every discovery method: we know exactly which edges carry the
year ``YY`` into the answer, because we wrote them.

How a planted model works (all weights are made here, in code, from a fixed seed)
---------------------------------------------------------------------------------
The residual stream is cut into named *slots*: orthonormal, zero-mean directions drawn once
from a seeded random basis (so the weights look dense).  A constant direction ``C`` and large
constant-norm codes keep every LayerNorm's scale steady (decoys write little); every
YY-dependent vector has the same norm for every ``YY`` (codes are points on a circle), so
LayerNorm never leaks which year was read.

* Number tokens ``"00"``..``"99"`` carry two codes of their value ``n``: ``lin`` (a point on a
  half circle, linear in ``n``) and ``ang`` (the angle ``w*n``, ``w = 2*pi/200``).  All other
  features of the hundred number tokens are identical.
* *Movers* are heads whose query reads ``C`` and key reads the "is a number" class feature:
  they attend from every later position to the YY token and copy one of its codes.
* *Maps* are groups of MLP neurons, active only at century tokens (or only at number tokens),
  whose output weights are fitted by least squares to turn one code into another (and to
  write nothing at the century token before YY, where no code has arrived).
* The unembedding reads the answer code ``ans = angle w*(n + 8)`` from each path, weighted by
  the path's share: the logit of the two-digit token ``y`` is ``120 * cos(w*(y - n - 8))`` and
  every other token's logit is near 0.  So the model puts its mass a few years after ``YY``
  (mean probability difference ~0.975).  Patching one path moves the peak to the weighted
  circular mean of the clean and corrupted angles, far below ``YY`` for most years.
* *Decoys* (all other heads and neurons) attend to the previous token, to BOS, to century
  tokens or by content, and write into decoy slots that neither the unembedding nor any
  circuit component reads.  Their inputs are identical in clean and corrupted prompts, except
  for the *YY decoys*: heads that read YY's code just like a mover but write it where nobody
  looks.

Only the variant's ``edges`` carry YY information into the logits; every other edge has no
effect when patched (up to float error), so they are exact ground truth for edge patching.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuits.errors import CircuitsError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import GPT2LMHeadModel

__all__ = ["VARIANTS", "Variant", "build_planted", "ground_truth", "planted_checkpoint", "task_neurons", "variant_for_spec"]

VERSION = 1
OFFSET = 8.0  # the answer distribution peaks OFFSET years after YY
OMEGA = 2 * math.pi / 200.0  # radians per year of the angle codes
BETA = 120.0  # logit amplitude of the two-digit tokens
READOUT_NORM = 12.0  # norm of the answer codes the unembedding reads
# norms of the features in the residual stream (the codes are large so readers need small weights)
AMP = {"C": 8.0, "POS": 1.5, "TOK": 2.0, "CLS": 2.0, "NUM_LIN": 4.0, "NUM_ANG": 4.0, "POOL": 0.5}
CODE_NORM = 4.0  # norm of the codes circuit components and YY decoys write
POS_FREQS = (2, 7, 15)  # positional code: angles 2*pi*k*pos/64
ATTN_SHARP = 40.0  # attention score a mover gives the number token (BOS gets half: its sink)
BOS_VALUE = -1.0  # BOS carries the codes of this value, so every position holds codes of equal norm
GATED = {"num2": ("num2", "bos"), "century": ("century",)}  # classes where a map's neurons may fire
GATE = 20.0  # how far a map's neurons are pushed below zero off their gate tokens
MAP_NEURONS = 48
MAP_GAIN = 4.0  # input gain of map neurons (per unit of code)
FIT_NOUNS = (" war", " reign", " siege")
FIT_CENTURIES = (11, 14, 17)
PROMPT_TEXT = ("The", "{noun}", " lasted from the year", " {xx}", "{yy}", " to the year", " {xx}")
CLASSES = ("num2", "century", "other", "bos")
FIXED_SLOTS = (("C", 1), ("POS", 2 * len(POS_FREQS)), ("TOK", 8), ("CLS", len(CLASSES)), ("NUM_LIN", 2), ("NUM_ANG", 2))


@dataclass(frozen=True)
class Mover:
    """A head that attends to the number token and copies the code in slot ``src`` to slot ``dst``.

    ``rotate`` turns the ``ang`` code into the answer code ``ans`` on the way.
    """

    layer: int
    head: int
    src: str
    dst: str
    rotate: bool = False


@dataclass(frozen=True)
class MlpMap:
    """A group of MLP neurons that maps code ``src_code`` in slot ``src`` to ``scale * dst_code`` in slot ``dst``.

    The neurons are active only at tokens of class ``gate`` (``num2`` or ``century``).
    """

    layer: int
    src: str
    src_code: str
    dst: str
    dst_code: str
    gate: str
    scale: float = 1.0


@dataclass(frozen=True)
class Variant:
    """One planted model: its shape, its circuit and the circuit's edges (the ground truth)."""

    name: str
    description: str
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    seed: int
    movers: tuple[Mover, ...]
    maps: tuple[MlpMap, ...]
    readout: tuple[tuple[str, float], ...]  # slot -> share of the answer logit
    yy_decoys: tuple[Mover, ...]
    edges: tuple[str, ...]
    positions: tuple[tuple[str, str], ...]  # node -> "YY" or "last": where it does its work
    n_positions: int = 64
    pairs: tuple[tuple[str, str], ...] = ()  # (edge, greater-than span): the positional ground truth, when given

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


# planted's two paths (a0.h0 -> m1 -> logits, a0.h1 -> logits), shared by planted-positional
PLANTED_EDGES = ("input->a0.h0<v>", "a0.h0->m1", "m1->logits", "input->a0.h1<v>", "a0.h1->logits")
PLANTED_POSITIONS = (("input", "YY"), ("a0.h0", "last"), ("a0.h1", "last"), ("m1", "last"), ("logits", "last"))

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="planted",
            description="2 layers x 4 heads, d_model 64: two paths (a0.h0 -> m1 -> logits, a0.h1 -> logits), 6 decoy heads",
            n_layers=2,
            n_heads=4,
            d_model=64,
            d_mlp=256,
            seed=20240501,
            movers=(Mover(0, 0, "NUM_LIN", "R_A"), Mover(0, 1, "NUM_ANG", "R_B", rotate=True)),
            maps=(MlpMap(1, "R_A", "lin", "M1", "ans", "century"),),
            readout=(("M1", 0.55), ("R_B", 0.45)),
            yy_decoys=(Mover(1, 2, "NUM_LIN", "D_YY0"),),
            edges=PLANTED_EDGES,
            positions=PLANTED_POSITIONS,
        ),
        Variant(
            name="planted-deep",
            description="4 layers x 6 heads, d_model 96: three paths through m0 (at YY), a1.h2, a0.h3, m2, m3 and a2.h1, 21 decoy heads",
            n_layers=4,
            n_heads=6,
            d_model=96,
            d_mlp=384,
            seed=20240502,
            movers=(
                Mover(0, 3, "NUM_LIN", "R_A"),
                Mover(1, 2, "M0", "R_C"),
                Mover(2, 1, "NUM_ANG", "R_B", rotate=True),
            ),
            maps=(
                MlpMap(0, "NUM_LIN", "lin", "M0", "k0", "num2"),
                MlpMap(2, "R_A", "lin", "M2", "k2", "century"),
                MlpMap(3, "R_C", "k0", "M3", "ans", "century", scale=0.5),
                MlpMap(3, "M2", "k2", "M3", "ans", "century", scale=0.5),
            ),
            readout=(("M3", 0.7), ("R_B", 0.3)),
            yy_decoys=(Mover(0, 5, "NUM_ANG", "D_YY0"), Mover(1, 4, "M0", "D_YY1")),
            edges=(
                "input->m0",
                "m0->a1.h2<v>",
                "a1.h2->m3",
                "input->a0.h3<v>",
                "a0.h3->m2",
                "m2->m3",
                "m3->logits",
                "input->a2.h1<v>",
                "a2.h1->logits",
            ),
            positions=(
                ("input", "YY"),
                ("m0", "YY"),
                ("a0.h3", "last"),
                ("a1.h2", "last"),
                ("m2", "last"),
                ("a2.h1", "last"),
                ("m3", "last"),
                ("logits", "last"),
            ),
        ),
        Variant(
            name="planted-positional",
            description="planted's two paths, plus a decoy map in m1 that reads a0.h0 at YY's position (where its "
                        "output carries YY too) and writes where nothing reads: a0.h0->m1 matters at the final century only",
            n_layers=2,
            n_heads=4,
            d_model=64,
            d_mlp=256,
            seed=20240503,
            movers=(Mover(0, 0, "NUM_LIN", "R_A"), Mover(0, 1, "NUM_ANG", "R_B", rotate=True)),
            maps=(MlpMap(1, "R_A", "lin", "M1", "ans", "century"), MlpMap(1, "R_A", "lin", "D_M1", "k0", "num2")),
            readout=(("M1", 0.55), ("R_B", 0.45)),
            yy_decoys=(Mover(1, 2, "NUM_LIN", "D_YY0"),),
            edges=PLANTED_EDGES,
            positions=PLANTED_POSITIONS,
            pairs=(
                ("input->a0.h0<v>", "YY"),
                ("a0.h0->m1", "XX2"),
                ("m1->logits", "XX2"),
                ("input->a0.h1<v>", "YY"),
                ("a0.h1->logits", "XX2"),
            ),
        ),
    )
}


def variant_for_spec(spec: str) -> Variant:
    """The variant a model spec names (``planted``, ``planted-deep``); CircuitsError lists the known ones."""
    try:
        return VARIANTS[spec]
    except KeyError:
        raise CircuitsError(f"unknown planted model {spec!r}; known: {', '.join(sorted(VARIANTS))}") from None


def ground_truth(variant: str) -> dict[str, Any]:
    """The planted circuit of ``variant``: its edges, nodes, node positions and the model's shape.

    Pure Python (no torch): graphs/ and scripts can import it cheaply.
    """
    from circuits import names

    v = variant_for_spec(variant)
    edges = sorted(v.edges, key=lambda e: _edge_key(names.parse_edge(e)))
    nodes = {names.format_node(n) for e in edges for n in (names.parse_edge(e).src, names.parse_edge(e).dst)}
    return {
        "variant": v.name,
        "description": v.description,
        "n_layers": v.n_layers,
        "n_heads": v.n_heads,
        "d_model": v.d_model,
        "edges": edges,
        "nodes": sorted(nodes, key=lambda n: names.node_layer_order(names.parse_node(n))),
        "positions": dict(v.positions),
        **({"pairs": [list(p) for p in v.pairs]} if v.pairs else {}),
    }


def task_neurons(variant: str) -> dict[str, tuple[int, ...]]:
    """The neurons of each MLP that carry the task (its maps' neurons), e.g. ``{"m1": (3, 17, ...)}``.

    Every other neuron of those MLPs is a decoy.  Rebuilds the variant's static weights (a
    second or so; no forward pass), so the indices are the ones ``build_planted`` uses.
    """
    from circuits import names
    from circuits.models.tokenizers import gpt2_tokenizer

    builder = _Builder(variant_for_spec(variant), gpt2_tokenizer())
    builder.static_weights()
    out: dict[str, list[int]] = {}
    for m, idx in builder.map_neurons.items():
        out.setdefault(names.format_node(names.mlp(m.layer)), []).extend(idx)
    return {k: tuple(sorted(set(v))) for k, v in sorted(out.items())}


def _edge_key(edge: Any) -> tuple:
    from circuits import names

    return (names.node_layer_order(edge.dst), edge.qkv or "", names.node_layer_order(edge.src))


def planted_checkpoint(spec: str) -> Path:
    """Build ``spec``'s model once into the cache (``planted/<variant>-v1``) and return its HF folder."""
    from circuits.models.cache import cached_folder
    from circuits.models.tokenizers import gpt2_tokenizer

    v = variant_for_spec(spec)

    def build(out: Path) -> None:
        from transformers.utils import logging as hf_logging

        model = build_planted(v.name)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar on the user's terminal
        try:
            model.save_pretrained(out)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        gpt2_tokenizer().save_pretrained(out)

    return cached_folder(f"planted/{v.name}-v{VERSION}", build)


def build_planted(variant: str) -> "GPT2LMHeadModel":
    """Construct ``variant`` deterministically: same weights on every call, no files read."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.models.tokenizers import gpt2_tokenizer

    v = variant_for_spec(variant)
    config = GPT2Config(
        vocab_size=50257,
        n_positions=v.n_positions,
        n_embd=v.d_model,
        n_layer=v.n_layers,
        n_head=v.n_heads,
        n_inner=v.d_mlp,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(v.seed)  # only the default init below; our weights use their own generator
        model = GPT2LMHeadModel(config).eval()
    builder = _Builder(v, gpt2_tokenizer())
    builder.write_static(model)
    builder.fit(model)
    return model


# --------------------------------------------------------------------------- construction


class _Builder:
    """Writes a variant's weights into a GPT-2 model, working in slot coordinates (float64)."""

    def __init__(self, v: Variant, tokenizer: Any) -> None:
        import torch

        self.v = v
        self.tok = tokenizer
        self.gen = torch.Generator().manual_seed(v.seed)
        self.d = v.d_model
        self.basis = self._basis()
        self.slots = self._slots()
        self.rho = math.sqrt(self.d) / math.sqrt(AMP["C"] ** 2 + 150.0)  # typical LayerNorm gain
        self.num_ids = [self._single(f"{n:02d}") for n in range(100)]
        self.century_ids = [self._single(f" {n:02d}") for n in range(10, 100)]
        self.gammas: dict[str, torch.Tensor] = {}
        self.betas: dict[str, torch.Tensor] = {}
        self.map_neurons: dict[MlpMap, list[int]] = {}

    # ---- helpers
    def _single(self, text: str) -> int:
        ids = self.tok.encode(text)
        if len(ids) != 1:
            raise CircuitsError(f"GPT-2's tokenizer split {text!r} into {len(ids)} tokens; the planted models need one")
        return ids[0]

    def rand(self, *shape: int) -> "torch.Tensor":
        import torch

        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    def uniform(self, lo: float, hi: float, *shape: int) -> "torch.Tensor":
        import torch

        return lo + (hi - lo) * torch.rand(*shape, generator=self.gen, dtype=torch.float64)

    def _basis(self) -> "torch.Tensor":
        """d-1 orthonormal columns orthogonal to the all-ones vector (LayerNorm's mean is always 0)."""
        import torch

        a = self.rand(self.d, self.d)
        a[:, 0] = 1.0
        q, _ = torch.linalg.qr(a)
        return q[:, 1:]

    def _slots(self) -> dict[str, list[int]]:
        names_ = list(FIXED_SLOTS)
        extra = [m.dst for m in self.v.movers + self.v.yy_decoys] + [m.dst for m in self.v.maps]
        for name in dict.fromkeys(extra):
            names_.append((name, 2))
        used = sum(k for _, k in names_)
        pool = self.d - 1 - used
        if pool < 8:
            raise CircuitsError(f"variant {self.v.name}: d_model {self.d} leaves only {pool} decoy dimensions")
        names_.append(("POOL", pool))
        out, i = {}, 0
        for name, k in names_:
            out[name] = list(range(i, i + k))
            i += k
        return out

    def q(self, slot: str) -> "torch.Tensor":
        """[d, k]: the residual directions of a slot."""
        return self.basis[:, self.slots[slot]]

    def amplitude(self, slot: str) -> float:
        """Norm of the code a circuit component writes into ``slot``."""
        if slot in AMP:
            return AMP[slot]
        return READOUT_NORM if slot in dict(self.v.readout) else CODE_NORM

    def read(self, slot: str) -> "torch.Tensor":
        """[d, k]: reader directions that see a feature of ``slot`` as about 1 after LayerNorm."""
        return self.q(slot) / (self.rho * self.amplitude(slot))

    def cls(self, name: str) -> "torch.Tensor":
        """Reader direction of one class flag (about 1 after LayerNorm on tokens of that class)."""
        return self.read("CLS")[:, CLASSES.index(name)]

    def ln(self, key: str) -> tuple["torch.Tensor", "torch.Tensor"]:
        """A LayerNorm's (weight, bias): random-looking; readers compensate for them exactly."""
        if key not in self.gammas:
            self.gammas[key] = self.uniform(0.7, 1.3, self.d)
            self.betas[key] = 0.0 * self.gammas[key] if key == "ln_f" else 0.05 * self.rand(self.d)
        return self.gammas[key], self.betas[key]

    def reader(self, key: str, w_eff: "torch.Tensor", b_eff: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """Weights on LayerNorm ``key``'s output that act as ``w_eff``, ``b_eff`` on the normalised input."""
        g, b = self.ln(key)
        w = w_eff / g[:, None]
        return w, b_eff - b @ w

    # ---- embeddings
    def embeddings(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        vocab = 50257
        tok = self.rand(vocab, 8)
        tok = tok / tok.norm(dim=1, keepdim=True)
        tok[self.num_ids] = tok[self.num_ids[0]].clone()  # the hundred numbers look alike except for their value
        cls = torch.zeros(vocab, len(CLASSES), dtype=torch.float64)
        cls[:, CLASSES.index("other")] = 1.0
        cls[self.num_ids] = 0.0
        cls[self.num_ids, CLASSES.index("num2")] = 1.0
        cls[self.century_ids] = 0.0
        cls[self.century_ids, CLASSES.index("century")] = 1.0
        cls[50256] = 0.0
        cls[50256, CLASSES.index("bos")] = 1.0
        n = torch.arange(100, dtype=torch.float64)
        wte = AMP["TOK"] * tok @ self.q("TOK").T + AMP["CLS"] * cls @ self.q("CLS").T
        wte[self.num_ids] += AMP["NUM_LIN"] * _code("lin", n) @ self.q("NUM_LIN").T
        wte[self.num_ids] += AMP["NUM_ANG"] * _code("ang", n) @ self.q("NUM_ANG").T
        bos = torch.tensor([BOS_VALUE], dtype=torch.float64)
        wte[50256] += (AMP["NUM_LIN"] * _code("lin", bos) @ self.q("NUM_LIN").T)[0]
        wte[50256] += (AMP["NUM_ANG"] * _code("ang", bos) @ self.q("NUM_ANG").T)[0]
        pos = torch.arange(self.v.n_positions, dtype=torch.float64)
        ang = torch.stack([2 * math.pi * k * pos / 64 for k in POS_FREQS], dim=1)
        pcode = torch.stack([ang.cos(), ang.sin()], dim=2).reshape(len(pos), -1)
        wpe = AMP["C"] * self.q("C").T.expand(len(pos), -1) + AMP["POS"] * pcode @ self.q("POS").T
        return wte, wpe

    # ---- attention
    def head_weights(self, layer: int, head: int) -> dict[str, "torch.Tensor"]:
        """Effective (pre-LayerNorm-compensation) Q, K, V [d, d_head], b_V [d_head] and O [d_head, d] of one head."""
        import torch

        dh, d = self.v.d_head, self.d
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        wq, wk, wv, bv, wo = z(d, dh), z(d, dh), z(d, dh), z(dh), z(dh, d)
        mover = next((m for m in self.v.movers + self.v.yy_decoys if (m.layer, m.head) == (layer, head)), None)
        if mover is not None:
            g = math.sqrt(ATTN_SHARP * math.sqrt(dh))
            wq[:, 0] = self.read("C")[:, 0] * g
            wk[:, 0] = (self.cls("num2") + 0.5 * self.cls("bos")) * g
            wv[:, :2] = self.read(mover.src)
            rot = _rotation(OMEGA * OFFSET) if mover.rotate else torch.eye(2, dtype=torch.float64)
            wo[:2] = rot.T @ self.q(mover.dst).T * self.amplitude(mover.dst)
            return {"q": wq, "k": wk, "v": wv, "bv": bv, "o": wo}
        kind = ("prev", "bos", "century", "content")[(layer * 7 + head * 3) % 4]
        if kind == "prev":  # query at i matches key at i-1 through the positional code
            g = math.sqrt(9.0 * math.sqrt(dh))
            p = self.read("POS")
            for i, k in enumerate(POS_FREQS):
                rot = _rotation(2 * math.pi * k / 64)
                wq[:, 2 * i : 2 * i + 2] = p[:, 2 * i : 2 * i + 2] @ rot * g
                wk[:, 2 * i : 2 * i + 2] = p[:, 2 * i : 2 * i + 2] * g
        elif kind in ("bos", "century"):
            g = math.sqrt((12.0 if kind == "bos" else 8.0) * math.sqrt(dh))
            wq[:, 0] = self.read("C")[:, 0] * g
            wk[:, 0] = self.cls(kind) * g
        else:  # content: a diffuse, token-dependent pattern
            wq[:, :4] = self.read("C") @ self.rand(1, 4) * 0.5 + self.read("TOK") @ self.rand(8, 4) * 0.4
            wk[:, :4] = self.read("TOK") @ self.rand(8, 4) * 0.6 + self.read("CLS") @ self.rand(len(CLASSES), 4) * 0.6
        reads = ["TOK", "CLS"] + (["POOL"] if layer > 0 else [])
        src = torch.cat([self.read(s) for s in reads], dim=1)
        wv[:] = src @ self.rand(src.shape[1], dh) * (0.5 / math.sqrt(src.shape[1]))
        bv[:] = 0.05 * self.rand(dh)
        pool = len(self.slots["POOL"])
        wo[:] = self.rand(dh, pool) @ self.q("POOL").T * (1.0 / math.sqrt(dh * pool))
        return {"q": wq, "k": wk, "v": wv, "bv": bv, "o": wo}

    # ---- MLPs
    def mlp_weights(self, layer: int) -> dict[str, "torch.Tensor"]:
        """Effective W_in [d, d_mlp], b_in, W_out [d_mlp, d] (maps' rows zero until fitted), b_out."""
        import torch

        d, n = self.d, self.v.d_mlp
        w_in = torch.zeros(d, n, dtype=torch.float64)
        b_in = torch.zeros(n, dtype=torch.float64)
        w_out = torch.zeros(n, d, dtype=torch.float64)
        order = torch.randperm(n, generator=self.gen).tolist()  # map neurons sit anywhere in the layer
        start = 0
        for m in (m for m in self.v.maps if m.layer == layer):
            idx = sorted(order[start : start + MAP_NEURONS])
            start += MAP_NEURONS
            self.map_neurons[m] = idx
            theta = self.uniform(0, 2 * math.pi, MAP_NEURONS)
            dirs = torch.stack([theta.cos(), theta.sin()])  # [2, k]
            off = [c for c in CLASSES if c not in GATED[m.gate]]
            gate = sum(self.cls(c) for c in off)
            w_in[:, idx] = self.read(m.src) @ dirs * MAP_GAIN - gate[:, None] * GATE
            b_in[idx] = self.uniform(-3.5, 0.5, MAP_NEURONS)
        decoy = sorted(order[start:])
        src = torch.cat([self.read(s) for s in ("TOK", "CLS", "POS") + (("POOL",) if layer > 0 else ())], dim=1)
        w_in[:, decoy] = src @ self.rand(src.shape[1], len(decoy)) * (1.5 / math.sqrt(src.shape[1] / 2))
        b_in[decoy] = 0.5 * self.rand(len(decoy))
        pool = len(self.slots["POOL"])
        w_out[decoy] = self.rand(len(decoy), pool) @ self.q("POOL").T * (0.5 / math.sqrt(len(decoy) * pool))
        b_out = self.q("POOL") @ self.rand(len(self.slots["POOL"])) * 0.05
        return {"w_in": w_in, "b_in": b_in, "w_out": w_out, "b_out": b_out}

    # ---- writing
    def write_static(self, model: "GPT2LMHeadModel") -> None:
        """Every weight except the maps' output rows and the unembedding (fitted in ``fit``)."""
        _load(model, self.static_weights())

    def static_weights(self) -> dict[str, "torch.Tensor"]:
        """The state dict ``write_static`` loads (it also fills ``map_neurons``)."""
        import torch

        v, d, dh = self.v, self.d, self.v.d_head
        wte, wpe = self.embeddings()
        sd: dict[str, torch.Tensor] = {"transformer.wte.weight": wte, "transformer.wpe.weight": wpe}
        for layer in range(v.n_layers):
            pre = f"transformer.h.{layer}."
            heads = [self.head_weights(layer, h) for h in range(v.n_heads)]
            w_eff = torch.cat([torch.cat([hw[k] for hw in heads], dim=1) for k in ("q", "k", "v")], dim=1)
            b_eff = torch.cat([torch.zeros(2 * d, dtype=torch.float64)] + [hw["bv"] for hw in heads])
            w, b = self.reader(f"ln_1.{layer}", w_eff, b_eff)
            sd[pre + "ln_1.weight"], sd[pre + "ln_1.bias"] = self.ln(f"ln_1.{layer}")
            sd[pre + "attn.c_attn.weight"], sd[pre + "attn.c_attn.bias"] = w, b
            sd[pre + "attn.c_proj.weight"] = torch.cat([hw["o"] for hw in heads], dim=0)
            sd[pre + "attn.c_proj.bias"] = self.q("POOL") @ self.rand(len(self.slots["POOL"])) * 0.05
            mw = self.mlp_weights(layer)
            w, b = self.reader(f"ln_2.{layer}", mw["w_in"], mw["b_in"])
            sd[pre + "ln_2.weight"], sd[pre + "ln_2.bias"] = self.ln(f"ln_2.{layer}")
            sd[pre + "mlp.c_fc.weight"], sd[pre + "mlp.c_fc.bias"] = w, b
            sd[pre + "mlp.c_proj.weight"], sd[pre + "mlp.c_proj.bias"] = mw["w_out"], mw["b_out"]
        sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = self.ln("ln_f")
        sd["lm_head.weight"] = torch.zeros(50257, d, dtype=torch.float64)
        assert dh * v.n_heads == d
        return sd

    def fit(self, model: "GPT2LMHeadModel") -> None:
        """Fit the maps' output weights layer by layer, then the unembedding, on real forward passes."""
        import torch

        tokens, n = self.fit_prompts()
        yy_pos, last = 8, tokens.shape[1] - 1
        for layer in sorted({m.layer for m in self.v.maps}):
            hidden = _capture_mlp_hidden(model, tokens, layer)  # [batch, pos, d_mlp]
            c_proj = model.transformer.h[layer].mlp.c_proj.weight
            w_out = c_proj.detach().double().clone()
            for m in (m for m in self.v.maps if m.layer == layer):
                cols = self.map_neurons[m]
                # where the map works (YY or the last position), and where BOS's codes reach it
                at, bos_at = (yy_pos, 0) if m.gate == "num2" else (last, yy_pos - 1)
                h = torch.cat([hidden[:, at, cols], hidden[:, bos_at, cols]]).double()
                values = torch.cat([n, torch.full_like(n, BOS_VALUE)])
                target = m.scale * self.amplitude(m.dst) * _code(m.dst_code, values)
                w_out[cols] += _ridge(h, target) @ self.q(m.dst).T
            _load(model, {f"transformer.h.{layer}.mlp.c_proj.weight": w_out})
        with torch.no_grad():
            final = model.transformer(tokens).last_hidden_state[:, last].double()
        g, _ = self.ln("ln_f")
        xhat = final / g
        w_u = torch.zeros(50257, self.d, dtype=torch.float64)
        y = torch.arange(100, dtype=torch.float64)
        ans = torch.stack([(OMEGA * y).cos(), (OMEGA * y).sin()], dim=1)  # [100, 2]
        for slot, share in self.v.readout:
            amp = (xhat @ self.q(slot)).norm(dim=1).mean()
            w_u[self.num_ids] += (BETA * share / amp) * ans @ self.q(slot).T
        others = torch.ones(50257, dtype=torch.bool)
        others[self.num_ids] = False
        w_u[others] += 0.3 * self.rand(int(others.sum()), 8) @ self.q("TOK").T  # small logits near 0
        _load(model, {"lm_head.weight": w_u / g})

    def fit_prompts(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Greater-than prompts for every value 00..99 in several contexts: tokens [batch, 13] and values [batch]."""
        import torch

        rows, values = [], []
        for noun in FIT_NOUNS:
            for xx in FIT_CENTURIES:
                base = [50256]
                parts = [p.format(noun=noun, xx=xx, yy="{yy}") for p in PROMPT_TEXT]
                for n in range(100):
                    ids = list(base)
                    for p in parts:
                        ids += self.tok.encode(p.replace("{yy}", f"{n:02d}"))
                    rows.append(ids)
                    values.append(n)
        lengths = {len(r) for r in rows}
        if lengths != {13}:
            raise CircuitsError(f"planted fit prompts should have 13 tokens, got lengths {sorted(lengths)}")
        return torch.tensor(rows), torch.tensor(values, dtype=torch.float64)


def _code(name: str, n: "torch.Tensor") -> "torch.Tensor":
    """A value's code, a point on the unit circle [N, 2]: lin, ang, ans (the answer), k0 or k2."""
    import torch

    if name == "lin":
        s = (n - 49.5) / 50.5
        return torch.stack([s, (1 - s**2).sqrt()], dim=1)
    theta = {
        "ang": lambda: OMEGA * n,
        "ans": lambda: OMEGA * (n + OFFSET),
        "k0": lambda: math.pi * (0.15 + 0.7 * n / 99),
        "k2": lambda: -math.pi * (0.2 + 0.6 * n / 99),
    }[name]()
    return torch.stack([theta.cos(), theta.sin()], dim=1)


def _rotation(a: float) -> "torch.Tensor":
    import torch

    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)


def _ridge(h: "torch.Tensor", target: "torch.Tensor", lam: float = 1e-6) -> "torch.Tensor":
    """argmin_W |h W - target|^2 + lam |h|^2 |W|^2, in float64."""
    import torch

    gram = h.T @ h
    reg = lam * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=h.dtype)
    return torch.linalg.solve(gram + reg, h.T @ target)


def _capture_mlp_hidden(model: "GPT2LMHeadModel", tokens: "torch.Tensor", layer: int) -> "torch.Tensor":
    import torch

    out: list[torch.Tensor] = []
    handle = model.transformer.h[layer].mlp.act.register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            model.transformer(tokens)
    finally:
        handle.remove()
    return out[0]


def _load(model: "GPT2LMHeadModel", weights: dict[str, "torch.Tensor"]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            p = params[name]
            if tuple(p.shape) != tuple(value.shape):
                raise AssertionError(f"{name}: built {tuple(value.shape)}, model has {tuple(p.shape)}")
            p.copy_(value.to(p.dtype))
