"""The NEuRT network in one file: config, encoder blocks, reconstruction and classification heads.

NEuRT (Raev et al., 2026) is a BERT-style encoder over one neuron's window of activity. Each time
step is a token of `n_features` numbers (the neuron's own trace and summaries of its neighbours,
see `tokens.py`). The maths is that of the published model, so its weights load unchanged
(`published.read_published`):

    x      = LayerNorm(Linear(tokens) + position[t])
    block  : h = LayerNorm(x + proj(attention(x)));  x = LayerNorm(h + fc2(relu(fc1(h))))  (post-LN)
    recon  = Linear(x_last)                                     one value per feature and time step
    window = softmax_t(query . x_last[t]);  logits = Linear(sum_t window[t] x_last[t])

Our additions, both off in the published configuration:

- The recording head: multiple-instance pooling over the neurons of a recording, which gives
  one decision per recording and one weight per neuron, either gated attention (Ilse et al.,
  2018) read next to the mean neuron, or signed evidence: each neuron's evidence for a class,
  pooled by a log-mean-exp, so that the weights are exactly how much each neuron's evidence
  counts (``recording_pooling``); optionally (``neuron_stats``) each neuron's embedding is read
  with a few activity statistics of its whole trace (event rates, correlations).
- Interpolation-residual reconstruction (``interpolate=True``). The published model sees hidden
  entries as zeros and must learn to fill gaps from scratch; it scored below plain linear
  interpolation on real data. Ours is told which entries are hidden (`hidden`, a learned vector
  per hidden feature added to the embedding), sees them filled by linear interpolation in time
  from the visible neighbours (`interpolate_hidden`), and predicts a correction to that fill:

      filled = interpolate_hidden(tokens, hidden)
      x      = LayerNorm(Linear(filled) + Linear_nobias(hidden) + Conv_t([filled, hidden])
                         + position[t])
      recon  = filled + Linear(x_last)            (the head starts at zero: recon = interpolation)

  `Conv_t` (``local_kernel`` > 0) is a temporal convolution of the fill and the mask over
  ``local_kernel`` steps. Attention with learned absolute positions finds "the step just before
  the gap" only approximately; the convolution hands every step the local shape of its trace
  (slopes, curvature, where the gap starts and ends) exactly, which the correction needs where
  the interpolation is already close (fast frame rates, short gaps).

Two paths compute the same function. The fast path (default) uses
`F.scaled_dot_product_attention` and fused LayerNorm kernels and never builds the (T, T) attention
maps. The exact path (``exact=True``) repeats the published arithmetic operation for operation
(explicit softmax(q k^T / sqrt(d)), TF-style LayerNorm) and returns the maps; on CPU it gives
the published model's numbers bit for bit. The two paths' outputs agree to about 1e-5.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

RECORDING_POOLINGS = ("gated", "evidence")

# A new `Neurt` draws its initial weights from torch's global random generator, which every
# thread shares: one network built (a model loaded) while another is built from a seed would
# take draws from the seeded sequence, and change the seeded network.
_GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def own_global_rng(seed: int | None = None) -> Iterator[None]:
    """Build networks here: torch's global random generator to this block alone among the
    package's threads, seeded with `seed` when given, and left as it was afterwards."""
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        if seed is not None:
            # the CPU generator alone, the one fork_rng restores: torch.manual_seed would also
            # reseed every CUDA (and MPS) generator, and leave them reseeded
            torch.default_generator.manual_seed(seed)
        yield


def check_recording_pooling(value: str) -> None:
    """Raise a clear error unless `value` is one of `RECORDING_POOLINGS`."""
    if value not in RECORDING_POOLINGS:
        raise ValueError(
            f"recording_pooling must be one of {', '.join(map(repr, RECORDING_POOLINGS))}; "
            f"got {value!r}"
        )


@dataclass
class NeurtConfig:
    """Shape of a NEuRT network. The defaults are those of the published model."""

    seq_len: int = 512  # longest window, and number of learned positions
    n_features: int = 5  # numbers per time step
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 4
    n_ff: int = 512  # width of the feed-forward layer
    n_classes: int = 0  # 0: no window classifier
    mil_hidden: int = 0  # 0: no recording head; else width of its gated attention
    # ours: numbers per neuron the recording head reads next to its embedding (0: none; else the
    # first ones of `tokens.ACTIVITY_STATISTICS`: event rates and correlations over the recording)
    neuron_stats: int = 0
    # ours: how the recording head pools its neurons, "gated" (attention next to the mean neuron)
    # or "evidence" (signed per-neuron evidence, log-mean-exp); see RecordingHead
    recording_pooling: str = "gated"
    # ours: an evidence head's recording term also reads the spread of the statistics over the
    # recording's neurons (their standard deviation), next to the mean neuron
    stats_spread: bool = False
    # the published LayerNorm puts epsilon inside the square root, as torch's does
    norm_eps: float = 1e-12
    interpolate: bool = False  # ours: hidden entries filled by interpolation, output a residual
    local_kernel: int = 0  # ours (needs interpolate): width of a temporal convolution of the fill

    def __post_init__(self) -> None:
        # a config can come from JSON (a checkpoint's config.json, `neurt pretrain --shape`): a
        # value of the wrong type fails here, by name, rather than deep in torch or at inference
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if kind is bool and isinstance(value, np.bool_):  # numpy's bools, stored as bool
                value = bool(value)
                setattr(self, name, value)
            wrong_bool = isinstance(value, bool) != (kind is bool)
            if wrong_bool or not isinstance(value, kind):
                raise ValueError(
                    f"NeurtConfig.{name} must be {_TYPE_WORDS[kind]}; got {value!r}"
                )
            if kind is numbers.Integral:  # numpy integers too, stored as int
                setattr(self, name, int(value))
            elif kind is numbers.Real:
                setattr(self, name, float(value))
        for name in ("seq_len", "n_features", "n_embd", "n_head", "n_layer", "n_ff"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"NeurtConfig.{name} must be at least 1; got {getattr(self, name)}"
                )
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if min(self.n_classes, self.mil_hidden, self.local_kernel, self.neuron_stats) < 0:
            raise ValueError(
                "n_classes, mil_hidden, local_kernel and neuron_stats must be 0 (absent) or positive"
            )
        if self.neuron_stats and not self.mil_hidden:
            raise ValueError("neuron statistics (neuron_stats > 0) need a recording head (mil_hidden)")
        if self.local_kernel and (not self.interpolate or self.local_kernel % 2 == 0):
            raise ValueError(
                "local_kernel is an odd number of steps and needs interpolate=True; got "
                f"local_kernel={self.local_kernel}, interpolate={self.interpolate}"
            )
        check_recording_pooling(self.recording_pooling)
        if self.stats_spread and not (self.neuron_stats and self.recording_pooling == "evidence"):
            raise ValueError(
                "stats_spread (the spread of the activity statistics over neurons) needs an "
                "evidence recording head that reads them (neuron_stats > 0)"
            )
        if self.mil_hidden and not self.n_classes:
            raise ValueError("a recording head (mil_hidden > 0) needs classes (n_classes > 0)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NeurtConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown NeurtConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**values)


_FIELD_TYPES = {
    **dict.fromkeys(
        ("seq_len", "n_features", "n_embd", "n_head", "n_layer", "n_ff", "n_classes",
         "mil_hidden", "neuron_stats", "local_kernel"),
        numbers.Integral,
    ),
    "recording_pooling": str,
    "stats_spread": bool,
    "norm_eps": numbers.Real,
    "interpolate": bool,
}
_TYPE_WORDS = {
    numbers.Integral: "a whole number", str: "a string", bool: "true or false",
    numbers.Real: "a number",
}


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose exact path spells out the published TF-style formula.

    Same function (epsilon inside the square root); the fused kernel rounds differently, and the
    deep post-LN stack amplifies that to ~1e-4 in the hidden states, so parity uses the formula.
    """

    def forward(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        if not exact:
            return super().forward(x)
        centred = x - x.mean(dim=-1, keepdim=True)
        variance = centred.pow(2).mean(dim=-1, keepdim=True)
        return self.weight * (centred / torch.sqrt(variance + self.eps)) + self.bias


class SelfAttention(nn.Module):
    def __init__(self, config: NeurtConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, exact: bool = False):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if exact:  # explicit path: the (B, H, T, T) maps are materialised and returned
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
            att = att.softmax(dim=-1)
            y = att @ v
        else:  # fused kernel (flash / memory-efficient / CPU flash); never builds the maps
            att = None
            y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.proj(y), att


class MLP(nn.Module):
    def __init__(self, config: NeurtConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.n_ff)
        self.proj = nn.Linear(config.n_ff, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x), inplace=True))  # in place: saves a (B, T, n_ff) copy


class Block(nn.Module):
    """Post-LN encoder block, as in BERT and the published model."""

    def __init__(self, config: NeurtConfig):
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln_1 = LayerNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = MLP(config)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, exact: bool = False):
        a, att = self.attn(x, exact)
        x = self.ln_1(x + a, exact)
        x = self.ln_2(x + self.mlp(x), exact)
        return x, att


class TimePool(nn.Module):
    """Window classifier: attention pooling over time with one learned query, then a linear map."""

    def __init__(self, config: NeurtConfig):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(config.n_embd))
        self.head = nn.Linear(config.n_embd, config.n_classes)

    def forward(self, h: torch.Tensor):
        """h (B, T, C) -> logits (B, n_classes), weights over time (B, T), pooled (B, C)."""
        weights = (h @ self.query).softmax(dim=-1)
        pooled = (weights.unsqueeze(1) @ h).squeeze(1)
        return self.head(pooled), weights, pooled


class RecordingHead(nn.Module):
    """Multiple-instance pooling over the neurons of a recording: logits and one weight per neuron.

    Every neuron i gets scores from gated attention (Ilse, Tomczak & Welling, 2018),
    s_i = W (tanh(V z_i) * sigmoid(U z_i)). Then, by ``recording_pooling``:

    - "gated": one score per neuron, weight = softmax over neurons; the recording is classified
      from the attended neurons, sum_i weight_i z_i, next to the mean neuron (animals differ in
      overall activity as much as groups do; the pair lets the classifier see a few neurons
      unlike the rest of their own recording). The weights say what the head looked at, but not
      on which side: it may attend to the normal neurons as well as to the abnormal ones.
    - "evidence": s_i holds neuron i's evidence for each class c >= 1 against class 0, and
      logit_c = log(mean_i exp(s_ic)) + b_c + w_c . mean_i z_i (logit_0 = 0). The log-mean-exp
      grows with every neuron's evidence and is dominated by the strongest, as a "some neurons
      are abnormal" decision should be; the mean neuron carries what changes in all neurons.
      The weights are softmax_i(s_ic) for the most probable class c >= 1 (class 1 with two
      classes): exactly the share of that logit's pooled evidence each neuron contributes, so a
      high weight always means "this neuron argues for class c".

    With ``neuron_stats`` > 0, z_i is the embedding followed by the neuron's activity statistics,
    standardised by `stats_shift` and `stats_scale` (buffers set from the training animals): an
    embedding describes a window of one trace, not how often the neuron fires over the recording
    or how it goes with the population. With ``stats_spread`` (evidence pooling only), the term
    of the mean neuron reads the statistics' standard deviation over the neurons as well: how
    unlike each other the recording's neurons are, which a mean hides.

    An evidence head's pooled evidence is scaled by `evidence_scale` (a buffer, one per class
    c >= 1): 1 while the head learns on bags of neurons, then set with the recording term by
    fitting them to whole recordings (`training.finetune`'s `whole_recording_fit`).
    """

    def __init__(self, config: NeurtConfig):
        super().__init__()
        width = config.n_embd + config.neuron_stats
        self.evidence = config.recording_pooling == "evidence"
        self.value = nn.Linear(width, config.mil_hidden)
        self.gate = nn.Linear(width, config.mil_hidden)
        self.spread = config.stats_spread
        if self.evidence:  # per neuron and per class c >= 1; the mean neuron's term likewise
            self.score = nn.Linear(config.mil_hidden, config.n_classes - 1)
            spread_width = config.neuron_stats if self.spread else 0
            self.head = nn.Linear(width + spread_width, config.n_classes - 1)
            self.register_buffer("evidence_scale", torch.ones(config.n_classes - 1))
        else:  # one score per neuron; the head reads the attended and the mean neuron
            self.score = nn.Linear(config.mil_hidden, 1)
            self.head = nn.Linear(2 * width, config.n_classes)
        self.neuron_stats = config.neuron_stats
        if self.neuron_stats:
            self.register_buffer("stats_shift", torch.zeros(self.neuron_stats))
            self.register_buffer("stats_scale", torch.ones(self.neuron_stats))

    def forward(self, z: torch.Tensor, stats: torch.Tensor | None = None):
        """z (..., N, C) neurons' embeddings and, when configured, their statistics
        (..., N, neuron_stats) -> logits (..., n_classes), weights (..., N)."""
        scores, summary = self.terms(z, stats)
        if not self.evidence:
            weights = scores.squeeze(-1).softmax(dim=-1)
            return self.head(summary), weights
        # (..., n_classes - 1): each class against class 0
        logits = self.evidence_scale * self.pooled(scores) + self.head(summary)
        logits = torch.cat([torch.zeros_like(logits[..., :1]), logits], dim=-1)
        strongest = logits[..., 1:].argmax(dim=-1, keepdim=True)  # most probable class >= 1
        chosen = scores.gather(-1, strongest.unsqueeze(-2).expand(*scores.shape[:-1], 1))
        return logits, chosen.squeeze(-1).softmax(dim=-1)

    @staticmethod
    def pooled(scores: torch.Tensor) -> torch.Tensor:
        """Evidence (..., N, n_classes - 1) pooled over neurons by log-mean-exp."""
        return torch.logsumexp(scores, dim=-2) - math.log(scores.shape[-2])

    def terms(self, z: torch.Tensor, stats: torch.Tensor | None = None):
        """The neurons' scores (..., N, n_scores) and what the linear `head` reads (...,
        in_features): for evidence pooling the mean neuron (and the statistics' spread), for gated
        pooling the attended neuron next to the mean one."""
        if self.neuron_stats:
            if stats is None or stats.shape[-1] != self.neuron_stats:
                raise ValueError(
                    f"this recording head reads {self.neuron_stats} activity statistics per "
                    "neuron (tokens.activity_statistics) next to the embeddings; pass them"
                )
            # in the buffers' precision: rounded to bf16 first (z's dtype under autocast), raw
            # statistics far from zero lost up to a quarter of their standard deviation
            standardised = (stats.to(self.stats_shift.dtype) - self.stats_shift) / self.stats_scale
            z = torch.cat([z, standardised], dim=-1)
        scores = self.score(torch.tanh(self.value(z)) * torch.sigmoid(self.gate(z)))
        mean = z.mean(dim=-2)
        if self.spread:  # how unlike each other the neurons are (a subset differs)
            mean = torch.cat([mean, standardised.std(dim=-2, correction=0)], dim=-1)
        if not self.evidence:
            weights = scores.squeeze(-1).softmax(dim=-1)
            attended = (weights.unsqueeze(-2) @ z).squeeze(-2)
            return scores, torch.cat([attended, mean], dim=-1)
        return scores, mean


class Neurt(nn.Module):
    """NEuRT encoder with its reconstruction head and, when configured, the two classifiers."""

    def __init__(self, config: NeurtConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.n_features, config.n_embd)
        self.pos = nn.Embedding(config.seq_len, config.n_embd)
        self.ln_embed = LayerNorm(config.n_embd, eps=config.norm_eps)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.recon_head = nn.Linear(config.n_embd, config.n_features)
        self.time_pool = TimePool(config) if config.n_classes else None
        self.recording_head = RecordingHead(config) if config.mil_hidden else None
        self.embed_hidden = (
            nn.Linear(config.n_features, config.n_embd, bias=False) if config.interpolate else None
        )
        self.embed_local = (
            nn.Conv1d(2 * config.n_features, config.n_embd, config.local_kernel,
                      padding=config.local_kernel // 2, bias=False)
            if config.local_kernel else None
        )
        self.apply(_init_weights)
        if config.interpolate:  # a fresh residual model reconstructs exactly the interpolation
            nn.init.zeros_(self.recon_head.weight)

    def encode(
        self, tokens: torch.Tensor, hidden: torch.Tensor | None = None, exact: bool = False
    ):
        """tokens (B, T, n_features), T <= seq_len -> (outputs, maps).

        `hidden` (bool, like `tokens`) marks the entries hidden from the model; only an
        ``interpolate`` model reads it (it fills them, see the module docstring), the published
        one sees whatever the tokens hold there (zeros, as `hide_steps` sets them).
        `outputs` holds every block's output (B, T, n_embd), the last one last. With `exact`, the
        published arithmetic is used and `maps` holds each block's attention (B, n_head, T, T);
        otherwise the fast path runs and `maps` is None.
        """
        B, T, _ = tokens.shape
        if T > self.config.seq_len:
            raise ValueError(
                f"a window has at most seq_len={self.config.seq_len} time steps; got {T}"
            )
        filled = self._filled(tokens, hidden)
        x = self.embed(filled) + self.pos.weight[:T]
        if self.embed_hidden is not None and hidden is not None:
            x = x + self.embed_hidden(hidden.to(x.dtype))
        if self.embed_local is not None:
            flags = hidden.to(x.dtype) if hidden is not None else torch.zeros_like(filled)
            local = torch.cat([filled, flags], dim=-1).transpose(1, 2)  # (B, 2F, T)
            x = x + self.embed_local(local).transpose(1, 2)  # odd kernel, "same" padding
        x = self.ln_embed(x, exact)
        outputs, maps = [], []
        for block in self.blocks:
            x, att = block(x, exact)
            outputs.append(x)
            maps.append(att)
        return outputs, (maps if exact else None)

    def forward(
        self, tokens: torch.Tensor, hidden: torch.Tensor | None = None, exact: bool = False
    ) -> torch.Tensor:
        """Reconstruction (B, T, n_features) of the windows `tokens` (B, T, n_features).

        `hidden` as in `encode`.
        """
        outputs, _ = self.encode(tokens, hidden, exact)
        correction = self.recon_head(outputs[-1])
        if not self.config.interpolate:
            return correction
        return self._filled(tokens, hidden) + correction

    def _filled(self, tokens: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        if not self.config.interpolate or hidden is None:
            return tokens
        return interpolate_hidden(tokens, hidden)

    def classify_windows(self, tokens: torch.Tensor, exact: bool = False):
        """tokens (B, T, F) -> logits (B, n_classes), time weights (B, T), pooled (B, n_embd)."""
        if self.time_pool is None:
            raise ValueError(
                "this model has no classifier head (it was trained for reconstruction only)"
            )
        outputs, _ = self.encode(tokens, exact=exact)
        return self.time_pool(outputs[-1])

    def classify_recording(
        self, neuron_embeddings: torch.Tensor, neuron_stats: torch.Tensor | None = None
    ):
        """Neurons' pooled embeddings (..., N, n_embd) and, for a head that reads them, their
        activity statistics (..., N, neuron_stats) -> logits, neuron weights (..., N)."""
        if self.recording_head is None:
            raise ValueError("this model has no recording head")
        return self.recording_head(neuron_embeddings, neuron_stats)


def interpolate_hidden(tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """`tokens` (B, T, F) with the `hidden` entries replaced by linear interpolation in time.

    Each hidden entry gets the straight line between the nearest visible entries of its feature
    before and after it; at a window's ends, the nearest visible value; with none visible, 0.
    """
    if hidden.shape != tokens.shape:
        raise ValueError(
            f"hidden must have the tokens' shape {tuple(tokens.shape)}; got {tuple(hidden.shape)}"
        )
    T = tokens.shape[1]
    t = torch.arange(T, device=tokens.device).view(1, T, 1).expand(tokens.shape)
    before = torch.where(hidden, -1, t).cummax(dim=1).values  # last visible step <= t, or -1
    after = torch.where(hidden, T, t).flip(1).cummin(dim=1).values.flip(1)  # first >= t, or T
    value_before = tokens.gather(1, before.clamp(min=0))
    value_after = tokens.gather(1, after.clamp(max=T - 1))
    fraction = (t - before).to(tokens.dtype) / (after - before).clamp(min=1).to(tokens.dtype)
    line = value_before + (value_after - value_before) * fraction
    has_before, has_after = before >= 0, after < T
    fill = torch.where(
        has_before & has_after,
        line,
        torch.where(has_before, value_before, torch.where(has_after, value_after, 0.0)),
    )
    return torch.where(hidden, fill, tokens)


def _init_weights(module: nn.Module) -> None:
    # Small normal weights (as BERT and GPT-2) keep a fresh network's outputs, and the time
    # pooling softmax, well conditioned; trained or imported weights overwrite all of this.
    # The local convolution keeps torch's own (fan-in scaled) init: its inputs are few and small.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, TimePool):
        nn.init.normal_(module.query, mean=0.0, std=0.02)
