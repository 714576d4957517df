"""Sparse autoencoders on stored activations: model, fused training step, data sources, resampling, checkpoints.

The model follows the paper's SAE (adapted from Discover-then-Name / ``sparse_autoencoder`` 1.x):

* a tied bias ``b_pre`` (initialised to 0) is subtracted before encoding and added after decoding;
* encoder ``f = ReLU((x - b_pre) W_enc + b_enc)`` (Kaiming-uniform init), or the TopK variant that keeps the ``k``
  largest pre-activations per sample (then ReLU, so at most ``k`` latents are active);
* decoder ``x_hat = f W_dec + b_pre``; every dictionary vector (row ``W_dec[i]``, the paper's decoder *column* ``i``)
  is renormalised to unit norm after every optimisation step;
* loss = mean over the batch of ``[ mean_j (x - x_hat)_j^2 + l1 * sum_k |f_k| ]``, optimised with Adam.

``paper=True`` (``clipgen sae train --paper``) follows the published ``sparse_autoencoder`` computation where it
differs from the defaults: (a) before each Adam step the gradient of every dictionary vector loses its component
along that vector (the library's ``UnitNormDecoder`` backward hook), then the vectors are renormalised as usual;
(b) the initialisation of the library's 3-D weights (:data:`INITS`); (c) resampling weights proportional to the
squared *total* loss of each input (reconstruction + L1), not the reconstruction error alone.

Training does not use autograd: :class:`FusedStep` computes the analytic gradients with five large matrix products
(autograd needs six: the gradient of the tied bias through the encoder is a matrix-vector product here), keeps every
statistic on the device (no host synchronisation between log intervals), and on CUDA the whole step, Adam and the
decoder renormalisation included, is captured once in a CUDA graph and replayed.

Data come from a :class:`ArraySource` (rows resident in memory or on the GPU, a fresh permutation every epoch) or a
:class:`StreamingSource` (contiguous blocks in a random order per epoch, shuffled in a memory buffer, the next buffer
read by a background thread). Both derive every random choice from ``(seed, epoch, ...)``, so an interrupted run
resumes from its last checkpoint with exactly the batches it would have seen.

Dead-latent resampling is Anthropic's recipe ("Towards Monosemanticity", 2023): latents that have not fired for a
window are re-initialised from inputs drawn with probability proportional to their squared reconstruction loss, and
their Adam state is reset. The published configuration never resamples:
``resample_every=0`` reproduces that.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipgen.errors import ClipgenError, file_error, option_error

SAE_FORMAT = "clipgen-sae"
CHECKPOINT_FORMAT = "clipgen-sae-checkpoint"
SAE_VERSION = 1
ACTIVATIONS = ("relu", "topk")
STEP_MODES = ("auto", "eager", "graph")
#: Initialisations: ``default`` = nn.Linear's (encoder weight and bias uniform in +-1/sqrt(d_in)), dictionary
#: vectors uniform in [-1, 1] then unit-normalised; ``published`` = the ``sparse_autoencoder`` library's on its
#: (components=1, d_sae, d_in) encoder weight: ``kaiming_uniform_(nonlinearity="relu")``, whose fan-in of a 3-D
#: tensor is d_sae * d_in, i.e. bound sqrt(6 / (d_sae d_in)) (1024 -> 4096: 1/836); bias bound 1/sqrt(d_sae)
#: (weight.size(1)); dictionary vectors standard normal then unit-normalised.
INITS = ("default", "published")
SAE_FILE = "sae.pt"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
#: Published intended interval (one shard pass) and loss-estimation sample count of the resampler.
PUBLISHED_RESAMPLE_INTERVAL = 302_080
PUBLISHED_RESAMPLE_SAMPLES = 819_200

# stream ids for np.random.default_rng([seed, epoch, stream, ...]) so every random choice is reproducible
_RNG_PERMUTATION, _RNG_BLOCKS, _RNG_BUFFER, _RNG_RESAMPLE, _RNG_VAL, _RNG_INIT, _RNG_FINAL = 1, 2, 3, 4, 5, 6, 7


# ---------------------------------------------------------------------------------------------------------------
# Model


@dataclass
class SAEArch:
    """What an SAE is: enough to rebuild it from a state dict."""

    d_in: int
    d_sae: int
    activation: str = "relu"  # "relu" or "topk"
    k: int | None = None  # active latents per sample for "topk"
    input_scale: float = 1.0  # inputs are multiplied by this before encoding (1.0: raw inputs, as in the paper)

    def check(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            raise option_error("--expansion", f"SAE sizes must be positive (d_in={self.d_in}, d_sae={self.d_sae})")
        if self.activation not in ACTIVATIONS:
            raise option_error("--activation",
                               f"unknown activation {self.activation!r} (one of {', '.join(ACTIVATIONS)})")
        if self.activation == "topk" and not (self.k and 1 <= self.k <= self.d_sae):
            raise option_error("--k", f"TopK needs 1 <= k <= {self.d_sae} latents, got {self.k}")
        if not (self.input_scale > 0 and math.isfinite(self.input_scale)):
            raise option_error("--scale-inputs", f"invalid input scale {self.input_scale}")


class SparseAutoencoder(nn.Module):
    """Tied-bias sparse autoencoder with unit-norm dictionary vectors (rows of ``W_dec``).

    Parameters: ``b_pre`` (d_in), ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in).
    :meth:`encode` and :meth:`decode` work in the units of the stored activations (the input scale is applied and
    undone inside); the training loss is computed on scaled inputs.
    """

    def __init__(self, arch: SAEArch, *, seed: int | None = 0, device: torch.device | str | None = None,
                 init: str = "default"):
        super().__init__()
        arch.check()
        self.arch = arch
        d, m = arch.d_in, arch.d_sae
        self.b_pre = nn.Parameter(torch.zeros(d, device=device))
        self.W_enc = nn.Parameter(torch.empty(d, m, device=device))
        self.b_enc = nn.Parameter(torch.empty(m, device=device))
        self.W_dec = nn.Parameter(torch.empty(m, d, device=device))
        self.reset_parameters(seed, init)

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = 0, init: str = "default") -> None:
        """Encoder, random unit-norm dictionary and ``b_pre = 0`` as :data:`INITS` ``init`` says.

        ``default``: nn.Linear's Kaiming-uniform (bound 1/sqrt(d_in)) for the encoder weight and bias. ``published``:
        the weight drawn as a (1, d_sae, d_in) tensor by ``kaiming_uniform_(nonlinearity="relu")`` (bound
        sqrt(6 / (d_sae d_in))) and transposed, the bias uniform in +-1/sqrt(d_sae), the dictionary standard normal.
        Drawn on the CPU from ``seed``, so the initial SAE does not depend on the device.
        """
        if init not in INITS:
            raise ValueError(f"unknown SAE initialisation {init!r} (one of {', '.join(INITS)})")
        g = torch.Generator()
        if seed is None:
            g.seed()
        else:
            g.manual_seed(int(seed))
        d, m = self.arch.d_in, self.arch.d_sae
        if init == "published":
            w = torch.empty(1, m, d)
            nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g)  # fan-in of a 3-D tensor: m * d
            self.W_enc.copy_(w[0].t())
            bound = 1.0 / math.sqrt(m)
            self.b_enc.copy_(torch.empty(m).uniform_(-bound, bound, generator=g))
            dec = torch.empty(m, d).normal_(0.0, 1.0, generator=g)
        else:
            bound = 1.0 / math.sqrt(d)
            self.W_enc.copy_(torch.empty(d, m).uniform_(-bound, bound, generator=g))
            self.b_enc.copy_(torch.empty(m).uniform_(-bound, bound, generator=g))
            dec = torch.empty(m, d).uniform_(-1.0, 1.0, generator=g)
        self.W_dec.copy_(dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.b_pre.zero_()

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Renormalise every dictionary vector (row of ``W_dec``) to unit L2 norm, in place."""
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min_(1e-12))

    def pre_activations(self, x_scaled: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc, x_scaled - self.b_pre, self.W_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.arch.activation == "relu":
            return torch.relu(pre)
        vals, idx = pre.topk(int(self.arch.k), dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``f`` of raw inputs ``x`` (n, d_in) -> (n, d_sae)."""
        s = self.arch.input_scale
        return self.activate(self.pre_activations(x * s if s != 1.0 else x))

    def decode_scaled(self, f: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_pre, f, self.W_dec)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the units of the raw inputs."""
        s = self.arch.input_scale
        xh = self.decode_scaled(f)
        return xh / s if s != 1.0 else xh

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return f, self.decode(f)


def sae_loss(model: SparseAutoencoder, x: torch.Tensor, l1: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss on raw inputs, with autograd (the reference the fused step is tested against).

    ``loss = mean_b [ mean_j (x_s - x_hat_s)_j^2 + l1 * sum_k |f_k| ]`` with ``x_s`` the scaled input.
    """
    s = model.arch.input_scale
    xs = x * s if s != 1.0 else x
    f = model.activate(model.pre_activations(xs))
    xh = model.decode_scaled(f)
    mse = (xh - xs).pow(2).mean(dim=1)
    l1_per = f.abs().sum(dim=1)
    loss = (mse + l1 * l1_per).mean()
    return loss, {"mse": mse.mean(), "l1": l1_per.mean(), "l0": (f > 0).sum(dim=1).float().mean()}


# ---------------------------------------------------------------------------------------------------------------
# Fused training step


class FusedStep:
    """One Adam step with hand-written gradients, device-resident statistics and dead-latent bookkeeping.

    Gradients of ``L = sse/(B d) + (l1/B) sum f`` with ``e = x_hat - x``:
    ``dL/dx_hat = 2e/(B d)``; ``dW_dec = f^T g``; ``g_f = g W_dec^T + l1/B`` masked by the active latents;
    ``dW_enc = (x - b_pre)^T g_pre``; ``db_enc = sum_b g_pre``; ``db_pre = sum_b g - W_enc db_enc``.
    ``compute_dtype=torch.bfloat16`` runs the five matrix products in bf16 (fp32 master weights, Adam state, error
    and statistics). ``project_decoder_grad`` (the published unit-norm decoder) removes from the gradient of every
    dictionary vector ``w_i`` its component along ``w_i``: ``dW_dec[i] -= (dW_dec[i] . u_i) u_i``, ``u_i = w_i/|w_i|``,
    before the Adam step.
    """

    def __init__(self, model: SparseAutoencoder, optimizer: torch.optim.Optimizer, *, l1: float,
                 compute_dtype: torch.dtype = torch.float32, project_decoder_grad: bool = False):
        self.model, self.opt, self.l1, self.cdt = model, optimizer, float(l1), compute_dtype
        self.project_decoder_grad = bool(project_decoder_grad)
        dev = model.W_enc.device
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        #: running sums since the last log: squared error, total sum of squares (per batch), sum |f|, active count
        self.stats = torch.zeros(4, dtype=torch.float64, device=dev)
        #: step (1-based count of completed steps) at which each latent last fired
        self.last_fired = torch.zeros(model.arch.d_sae, dtype=torch.int64, device=dev)
        self.step_t = torch.zeros((), dtype=torch.int64, device=dev)

    @torch.no_grad()
    def grads(self, x: torch.Tensor) -> None:
        """Write the gradients of the loss on ``x`` (raw rows, (B, d_in)) into ``p.grad`` and update statistics."""
        m, cdt = self.model, self.cdt
        lowp = cdt != torch.float32
        if x.dtype != torch.float32:
            x = x.float()
        s = m.arch.input_scale
        if s != 1.0:
            x = x * s
        b, d = x.shape
        w_enc = m.W_enc.to(cdt) if lowp else m.W_enc
        w_dec = m.W_dec.to(cdt) if lowp else m.W_dec
        xc = x - m.b_pre
        xc_c = xc.to(cdt) if lowp else xc
        pre = torch.addmm(m.b_enc.to(cdt) if lowp else m.b_enc, xc_c, w_enc)
        if m.arch.activation == "relu":
            f = torch.relu_(pre)
        else:
            vals, idx = pre.topk(int(m.arch.k), dim=1)
            f = torch.zeros_like(pre).scatter_(1, idx, torch.relu_(vals))
        active = f > 0
        xh = torch.addmm(m.b_pre.to(cdt) if lowp else m.b_pre, f, w_dec)
        e = (xh.float() if lowp else xh).sub_(x)
        sse = torch.dot(e.view(-1), e.view(-1))
        g = e.mul_(2.0 / (b * d))  # e is not needed any more
        g_c = g.to(cdt) if lowp else g
        if lowp:
            m.W_dec.grad.copy_(torch.mm(f.t(), g_c))
        else:
            torch.mm(f.t(), g_c, out=m.W_dec.grad)
        if self.project_decoder_grad:
            u = m.W_dec / torch.linalg.vector_norm(m.W_dec, dim=1, keepdim=True).clamp_min(1e-12)
            m.W_dec.grad.sub_(u * (m.W_dec.grad * u).sum(dim=1, keepdim=True))
        gf = torch.mm(g_c, w_dec.t())
        gf.add_(self.l1 / b).mul_(active)
        if lowp:
            m.W_enc.grad.copy_(torch.mm(xc_c.t(), gf))
        else:
            torch.mm(xc_c.t(), gf, out=m.W_enc.grad)
        gb_enc = gf.sum(dim=0, dtype=torch.float32)
        m.b_enc.grad.copy_(gb_enc)
        torch.addmv(g.sum(dim=0), m.W_enc, gb_enc, alpha=-1.0, out=m.b_pre.grad)
        # statistics (stay on the device)
        xm = x.mean(dim=0)
        sst = torch.dot(x.view(-1), x.view(-1)) - b * torch.dot(xm, xm)
        l1_sum = f.sum(dtype=torch.float32)
        l0 = active.sum().to(torch.float32)
        self.stats.add_(torch.stack([sse, sst, l1_sum, l0]).to(torch.float64))
        self.step_t.add_(1)
        self.last_fired.masked_fill_(active.any(dim=0), self.step_t)

    def __call__(self, x: torch.Tensor) -> None:
        self.grads(x)
        self.opt.step()
        self.model.normalise_decoder_()


class GraphStep:
    """A :class:`FusedStep` captured in a CUDA graph after three warm-up steps, then replayed (CUDA only).

    The batch is copied into a static buffer before each replay; parameters, Adam state and statistics are updated
    in place, so resampling between replays stays visible to the graph.
    """

    WARMUP = 3

    def __init__(self, step: FusedStep, batch_size: int, d_in: int):
        self.step = step
        dev = step.model.W_enc.device
        if dev.type != "cuda":
            raise option_error("--step-mode", "'graph' needs a CUDA device")
        self.static_x = torch.zeros(batch_size, d_in, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0

    def __call__(self, x: torch.Tensor) -> None:
        if x.data_ptr() != self.static_x.data_ptr():
            self.static_x.copy_(x, non_blocking=True)
        if self.graph is None:
            if self.warm < self.WARMUP:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self.step(self.static_x)
                torch.cuda.current_stream().wait_stream(side)
                self.warm += 1
                return
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.step(self.static_x)
            self.graph = graph
        self.graph.replay()


def make_optimizer(model: SparseAutoencoder, lr: float, betas: tuple[float, float], eps: float) -> torch.optim.Adam:
    """Adam (weight decay 0): fused (and capturable) on CUDA, fused on CPU where this torch supports it."""
    params = list(model.parameters())
    cuda = model.W_enc.device.type == "cuda"
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True, capturable=cuda)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch without fused CPU Adam
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, foreach=True, capturable=cuda)


# ---------------------------------------------------------------------------------------------------------------
# Data sources


class ArraySource:
    """Training rows held in memory (CPU or GPU), visited in a fresh seeded permutation every epoch."""

    def __init__(self, data: np.ndarray | torch.Tensor, *, seed: int = 0, device: torch.device | str = "cpu"):
        t = torch.as_tensor(data)
        if t.ndim != 2 or t.shape[0] == 0:
            raise ClipgenError(f"training data must be a non-empty (rows, width) matrix, got shape {tuple(t.shape)}")
        self.data = t.to(device=device, dtype=torch.float32).contiguous()
        self.n_rows, self.d = (int(v) for v in self.data.shape)
        self.seed = int(seed)
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.data.device

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, int(epoch), _RNG_PERMUTATION])
            self._perm = (epoch, torch.from_numpy(rng.permutation(self.n_rows)).to(self.data.device))
        return self._perm[1]

    def batches(self, epoch: int, start_step: int, batch_size: int,
                out: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Batches ``start_step, start_step+1, ...`` of ``epoch`` (the last partial batch is dropped)."""
        perm = self.permutation(epoch)
        for s in range(start_step, self.n_rows // batch_size):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            if out is not None and out.device == self.data.device:
                torch.index_select(self.data, 0, idx, out=out)
                yield out
            else:
                yield self.data.index_select(0, idx)

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """Up to ``n`` distinct random rows (for resampling and scale estimates)."""
        if n >= self.n_rows:
            return self.data
        idx = np.sort(rng.choice(self.n_rows, size=n, replace=False))
        return self.data.index_select(0, torch.from_numpy(idx).to(self.data.device))


class StreamingSource:
    """Rows read in contiguous blocks, in a random block order per epoch, shuffled within a memory buffer.

    ``blocks``: contiguous global row ranges ``(start, stop)``; ``read(start, stop)`` returns those rows (float16 or
    float32: the store's dtype is kept in the buffer, halving its memory for float16 stores); ``keep`` (bool per
    global row) drops rows (validation rows, other splits). A buffer holds ``buffer_rows // block_rows`` blocks,
    read in ascending order; the positions of its kept rows are permuted, and each batch is gathered from the
    buffer in that order (one copy per row, no permuted copy of the whole buffer). The epoch is the concatenation
    of the buffers, cut into batches (the last partial batch is dropped). Batches come in the buffer's dtype: the
    training step converts them to float32 (on the GPU, after a transfer of half the bytes). The next buffer is
    read by a background thread.
    """

    def __init__(self, blocks: Sequence[tuple[int, int]], read: Callable[[int, int], np.ndarray], d: int, *,
                 keep: np.ndarray | None = None, seed: int = 0, buffer_rows: int = 1 << 20, prefetch: bool = True):
        self.read, self.d, self.seed, self.prefetch = read, int(d), int(seed), prefetch
        self.keep = keep
        kept = [(a, b, int(keep[a:b].sum()) if keep is not None else b - a) for a, b in blocks]
        self.blocks = [(a, b) for a, b, n in kept if n > 0]
        self.block_counts = [n for _, _, n in kept if n > 0]
        self.n_rows = int(sum(self.block_counts))
        if self.n_rows == 0:
            raise ClipgenError("no training rows left after filtering")
        largest = max(b - a for a, b in self.blocks)
        self.blocks_per_buffer = max(1, int(buffer_rows) // max(1, largest))
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    device = torch.device("cpu")

    def _groups(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, int(epoch), _RNG_BLOCKS]).permutation(len(self.blocks))
        k = self.blocks_per_buffer
        return [sorted(order[i:i + k].tolist()) for i in range(0, len(order), k)]

    def _load(self, epoch: int, gi: int, group: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the group's blocks (in block order) and the shuffled buffer positions of the kept ones."""
        total = sum(self.blocks[bi][1] - self.blocks[bi][0] for bi in group)
        buf: np.ndarray | None = None
        kept, pos = [], 0
        for bi in group:  # ascending block index: sequential reads within a buffer
            a, b = self.blocks[bi]
            rows = np.asarray(self.read(a, b))
            if rows.shape != (b - a, self.d):
                raise ClipgenError(f"block rows {a}:{b}: expected shape {(b - a, self.d)}, read {rows.shape}")
            if buf is None:
                dtype = rows.dtype if rows.dtype in (np.float16, np.float32) else np.float32
                buf = np.empty((total, self.d), dtype=dtype)
            buf[pos:pos + b - a] = rows
            kept.append(pos + np.flatnonzero(self.keep[a:b]) if self.keep is not None else np.arange(pos, pos + b - a))
            pos += b - a
        idx = np.concatenate(kept)
        perm = np.random.default_rng([self.seed, int(epoch), _RNG_BUFFER, gi]).permutation(len(idx))
        return buf, idx[perm]

    def batches(self, epoch: int, start_step: int, batch_size: int,
                out: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        steps = self.n_rows // batch_size
        if start_step >= steps:
            return
        start_row, emitted = start_step * batch_size, start_step
        groups = self._groups(epoch)
        counts = [sum(self.block_counts[i] for i in g) for g in groups]
        needed, pos = [], 0
        for gi, n in enumerate(counts):
            if pos + n > start_row:
                needed.append((gi, pos))
            pos += n
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            future = pool.submit(self._load, epoch, needed[0][0], groups[needed[0][0]]) if pool else None
            carry: np.ndarray | None = None
            for j, (gi, gpos) in enumerate(needed):
                buf, order = future.result() if future is not None else self._load(epoch, gi, groups[gi])
                if pool is not None and j + 1 < len(needed):
                    nxt = needed[j + 1][0]
                    future = pool.submit(self._load, epoch, nxt, groups[nxt])
                self._last = (buf, order)
                if gpos < start_row:
                    order = order[start_row - gpos:]
                i = 0
                if carry is not None:
                    take = min(batch_size - len(carry), len(order))
                    carry = np.concatenate([carry, buf[order[:take]]])
                    i = take
                    if len(carry) < batch_size:
                        continue
                    yield torch.from_numpy(carry)
                    emitted += 1
                    carry = None
                    if emitted >= steps:
                        return
                while i + batch_size <= len(order):
                    yield torch.from_numpy(buf[order[i:i + batch_size]])
                    i += batch_size
                    emitted += 1
                    if emitted >= steps:
                        return
                carry = buf[order[i:]] if i < len(order) else None
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """Up to ``n`` random rows (float32) of the buffer in use (the first buffer of epoch 0 before training)."""
        if self._last is None:
            self._last = self._load(0, 0, self._groups(0)[0])
        buf, order = self._last
        idx = np.sort(order if n >= len(order) else rng.choice(order, size=n, replace=False))
        return torch.from_numpy(buf[idx]).float()


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and resampling


@torch.no_grad()
def evaluate(model: SparseAutoencoder, x: torch.Tensor, l1: float, *, chunk: int = 8192) -> dict[str, float]:
    """Loss parts, L0, fraction of variance explained and never-active latents of ``model`` on rows ``x``."""
    dev = model.W_enc.device
    s = model.arch.input_scale
    d = model.arch.d_in
    sse = l1s = l0s = 0.0
    n = 0
    sum_x = torch.zeros(d, dtype=torch.float64, device=dev)
    sumsq = 0.0
    fired = torch.zeros(model.arch.d_sae, dtype=torch.bool, device=dev)
    for a in range(0, x.shape[0], chunk):
        xb = x[a:a + chunk].to(dev, torch.float32)
        if s != 1.0:
            xb = xb * s
        f = model.activate(model.pre_activations(xb))
        e = model.decode_scaled(f) - xb
        sse += float(e.double().pow(2).sum())
        l1s += float(f.double().sum())
        l0s += float((f > 0).sum())
        fired |= (f > 0).any(dim=0)
        sum_x += xb.double().sum(dim=0)
        sumsq += float(xb.double().pow(2).sum())
        n += xb.shape[0]
    if n == 0:
        raise ClipgenError("no validation rows")
    sst = sumsq - float(sum_x.pow(2).sum()) / n
    mse = sse / (n * d)
    return {"loss": mse + l1 * l1s / n, "mse": mse, "l1": l1s / n, "l1_loss": l1 * l1s / n, "l0": l0s / n,
            "fve": 1.0 - sse / sst if sst > 0 else float("nan"), "dead": int((~fired).sum()),
            "dead_fraction": float((~fired).float().mean()), "rows": n}


@torch.no_grad()
def resample_probabilities(model: SparseAutoencoder, inputs: torch.Tensor, *, l1: float = 0.0,
                           chunk: int = 8192) -> np.ndarray:
    """Probability of each input (raw rows) to be drawn by the resampler: proportional to the square of its loss.

    The loss is ``mean_j (x_s - x_hat_s)_j^2 + l1 * sum_k |f_k|``: with ``l1 = 0`` (the default) the
    reconstruction error alone, with the training coefficient the total loss, as the published library does.
    Uniform when every loss is 0.
    """
    dev, s = model.W_enc.device, model.arch.input_scale
    losses = []
    for a in range(0, inputs.shape[0], chunk):
        xb = inputs[a:a + chunk].to(dev, torch.float32)
        if s != 1.0:
            xb = xb * s
        f = model.activate(model.pre_activations(xb))
        loss = (model.decode_scaled(f) - xb).pow(2).mean(dim=1).double()
        if l1:
            loss = loss + l1 * f.abs().sum(dim=1).double()
        losses.append(loss.cpu())
    p = torch.cat(losses).numpy() ** 2
    total = p.sum()
    return p / total if total > 0 and np.isfinite(total) else np.full(len(p), 1.0 / len(p))


@torch.no_grad()
def resample_dead_latents(model: SparseAutoencoder, optimizer: torch.optim.Optimizer, dead: torch.Tensor,
                          inputs: torch.Tensor, rng: np.random.Generator, *, encoder_scale: float = 0.2,
                          chunk: int = 8192, l1: float = 0.0) -> int:
    """Re-initialise ``dead`` latents (indices) from ``inputs`` (raw rows); returns how many were resampled.

    Anthropic's recipe: each input gets probability proportional to the square of its loss
    (:func:`resample_probabilities`: the reconstruction loss, plus ``l1 * sum |f|`` when ``l1`` is given); one
    input is drawn (with replacement) per dead latent; its centred, unit-normalised vector ``v = (x_s - b_pre)/|.|``
    becomes the latent's dictionary vector, and ``v * encoder_scale * mean |encoder vector of live latents|`` its
    encoder vector; its encoder bias is set to 0 and the Adam moments of all three are reset.
    """
    dead = dead.to(model.W_enc.device).long()
    nd = int(dead.numel())
    if nd == 0 or inputs.shape[0] == 0:
        return 0
    dev, s = model.W_enc.device, model.arch.input_scale
    p = resample_probabilities(model, inputs, l1=l1, chunk=chunk)
    pick = rng.choice(len(p), size=nd, replace=True, p=p)
    x = inputs[torch.from_numpy(pick).to(inputs.device)].to(dev, torch.float32)
    if s != 1.0:
        x = x * s
    v = x - model.b_pre
    v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-12)
    alive = torch.ones(model.arch.d_sae, dtype=torch.bool, device=dev)
    alive[dead] = False
    enc_norms = torch.linalg.vector_norm(model.W_enc, dim=0)
    mean_norm = float(enc_norms[alive].mean()) if bool(alive.any()) else 1.0
    model.W_dec.index_copy_(0, dead, v)
    model.W_enc.index_copy_(1, dead, (v * (encoder_scale * mean_norm)).t().contiguous())
    model.b_enc.index_fill_(0, dead, 0.0)
    for param, dim in ((model.W_dec, 0), (model.W_enc, 1), (model.b_enc, 0)):
        st = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in st:
                st[key].index_fill_(dim, dead, 0.0)
    return nd


# ---------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class SAETrainConfig:
    """``clipgen sae train``: every option, resolved; written as ``config.json`` next to the run."""

    stores: list[str] = field(default_factory=list)
    out: str = ""
    layer: str = "embedding"
    split: str | None = None  # keep only training-store rows of this split (None: all rows)
    val_store: str | None = None
    val_split: str | None = None
    val_fraction: float = 0.05  # held out from the training rows when there is no --val-store (0: no validation)
    val_max_rows: int = 65_536
    expansion: int = 4
    activation: str = "relu"
    k: int = 32
    scale_inputs: bool = False
    l1: float | None = None  # None: 1e-4 for relu (paper), 0 for topk
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    batch_size: int | None = None  # None: DEFAULT_BATCH_SIZE (the paper's), or every training row when fewer
    epochs: int = 200
    seed: int = 49
    resample_every: int = 10_000_000  # samples between resampling checks (0: never, the published behaviour)
    resample_max: int = 4  # resampling checks at most (0: unlimited)
    resample_window: int | None = None  # dead = no firing for this many samples (None: resample_every)
    resample_samples: int = PUBLISHED_RESAMPLE_SAMPLES
    dead_window: int = 1_000_000  # samples without firing after which a latent counts as dead in the logs
    log_every: int = 1_000_000
    val_every: int = 10_000_000
    checkpoint_every: int = 10_000_000
    keep_checkpoints: int = 2
    buffer_mb: float = 4096  # training rows up to this size (MiB) are held in memory; larger sets stream
    block_rows: int = 16_384
    device: str = "auto"
    precision: str = "auto"  # fp32 or bf16 (bf16: matrix products in bf16, fp32 master weights)
    step_mode: str = "auto"  # eager, graph (CUDA graph) or auto (graph on CUDA)
    paper: bool = False  # the published computation: projected decoder gradient, library init, total-loss resampling

    def resolved_l1(self) -> float:
        if self.l1 is not None:
            return float(self.l1)
        return 0.0 if self.activation == "topk" else 1e-4


#: The paper's SAE batch size (the default when the training set holds at least this many rows).
DEFAULT_BATCH_SIZE = 2048

#: Training rows the final model is evaluated on (a seeded sample; every row of a smaller set) for the final
#: statistics (``TrainResult.final``, ``metrics.json``'s ``final``, the log's ``final`` record).
FINAL_EVAL_ROWS = 65_536

#: Settings a resumed run must share with its checkpoint (they change the model or the data order).
FROZEN_ON_RESUME = ("layer", "split", "val_store", "val_split", "val_fraction", "val_max_rows", "expansion",
                    "activation", "k", "scale_inputs", "l1", "lr", "beta1", "beta2", "eps", "batch_size", "seed",
                    "resample_every", "resample_max", "resample_window", "resample_samples", "buffer_mb",
                    "block_rows", "paper")


@dataclass
class TrainingData:
    """What :func:`train_sae` trains and validates on."""

    source: ArraySource | StreamingSource
    val: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # store fingerprints, layer, row counts: kept in checkpoints


@dataclass
class TrainResult:
    out: Path
    steps: int
    samples: int
    epochs: int
    final: dict[str, Any]
    val: dict[str, Any] | None
    resample_checks: int
    revived: int
    seconds: float
    samples_per_s: float
    already_complete: bool = False


def _layer_width(store: Any, path: str, layer: str, option: str) -> int:
    if layer not in store.layers:
        raise option_error(option, f"{path}: no layer {layer!r} in this store (layers: {' '.join(store.layers)})")
    shape = store.layer_info(layer)["shape"]
    if len(shape) != 2:
        raise option_error("--layer", f"{path}: layer {layer!r} is stored unpooled ({shape[1:]} per row); an SAE "
                                      "needs one vector per image (extract it with pooling)")
    return int(shape[1])


def _split_mask(store: Any, path: str, split: str | None, option: str) -> np.ndarray:
    if split is None:
        return np.ones(store.n_samples, dtype=bool)
    splits = store.samples.splits
    mask = splits == split
    if not mask.any():
        have = sorted({str(x) for x in splits}) or ["none"]
        raise option_error(option, f"{path}: no rows of split {split!r} (splits: {', '.join(have)})")
    return mask


def open_training_data(cfg: SAETrainConfig, stack: Any, *, device: torch.device) -> TrainingData:
    """Training rows (and validation rows) of ``cfg.layer`` from the stores of ``cfg``; stores stay open in ``stack``.

    Training rows: every row of every store (only ``cfg.split`` rows when given), in store order. Validation: the
    rows of ``cfg.val_store`` (``cfg.val_split``), else a seeded ``cfg.val_fraction`` of the training rows, which
    then leave the training set; at most ``cfg.val_max_rows`` rows either way. Training rows that fit in
    ``cfg.buffer_mb`` are read once (chunk-aligned blocks) and kept in memory, on the GPU when it has room;
    larger sets are streamed (:class:`StreamingSource`).
    """
    from clipgen.store import open_store

    if not cfg.stores:
        raise option_error("STORE", "at least one activation store is required")
    segments: list[tuple[Any, int, int]] = []  # (store, first global row, rows)
    masks, widths, stores_info = [], {}, []
    offset = 0
    for path in cfg.stores:
        st = stack.enter_context(open_store(path))
        widths[str(path)] = _layer_width(st, str(path), cfg.layer, "--layer")
        masks.append(_split_mask(st, str(path), cfg.split, "--split"))
        segments.append((st, offset, st.n_samples))
        stores_info.append({"fingerprint": st.fingerprint, "rows": st.n_samples})
        offset += st.n_samples
    if len(set(widths.values())) > 1:
        desc = ", ".join(f"{p}: {w}" for p, w in widths.items())
        raise option_error("STORE", f"layer {cfg.layer!r} has different widths in the stores ({desc})")
    width = next(iter(widths.values()))
    keep = np.concatenate(masks)

    def read_rows(global_rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(global_rows), width), dtype=np.float32)
        for st, off, n in segments:
            sel = (global_rows >= off) & (global_rows < off + n)
            if sel.any():
                out[sel] = st.read_layer(cfg.layer, rows=global_rows[sel] - off)
        return out

    rng = np.random.default_rng([cfg.seed, 0, _RNG_VAL])
    val, val_info = None, {"source": "none", "rows": 0}
    if cfg.val_store:
        vs = stack.enter_context(open_store(cfg.val_store))
        vw = _layer_width(vs, str(cfg.val_store), cfg.layer, "--val-store")
        if vw != width:
            raise option_error("--val-store", f"{cfg.val_store}: layer {cfg.layer!r} is {vw} wide, the training "
                                              f"stores' is {width}")
        rows = np.flatnonzero(_split_mask(vs, str(cfg.val_store), cfg.val_split, "--val-split"))
        if cfg.val_max_rows and len(rows) > cfg.val_max_rows:
            rows = np.sort(rng.choice(rows, size=cfg.val_max_rows, replace=False))
        val = torch.from_numpy(vs.read_layer(cfg.layer, rows=rows))
        val_info = {"source": "store", "fingerprint": vs.fingerprint, "rows": len(rows)}
    elif cfg.val_fraction > 0:
        cand = np.flatnonzero(keep)
        n_val = int(round(cfg.val_fraction * len(cand)))
        if cfg.val_max_rows:
            n_val = min(n_val, cfg.val_max_rows)
        if n_val > 0:
            pick = np.sort(rng.choice(cand, size=n_val, replace=False))
            keep[pick] = False
            val = torch.from_numpy(read_rows(pick))
            val_info = {"source": "held-out fraction", "fraction": cfg.val_fraction, "rows": n_val}
    n_keep = int(keep.sum())
    if n_keep == 0:
        raise option_error("--split" if cfg.split else "STORE", "no training rows")
    budget_rows = max(1, int(cfg.buffer_mb * (1 << 20)) // (4 * width))
    if n_keep <= budget_rows:
        arr = np.empty((n_keep, width), dtype=np.float32)
        pos = 0
        for st, off, n in segments:
            for _, block in st.iter_layer(cfg.layer, rows=keep[off:off + n]):
                arr[pos:pos + len(block)] = block
                pos += len(block)
        where = torch.device("cpu")
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if arr.nbytes < 0.5 * free:
                where = device
        source: ArraySource | StreamingSource = ArraySource(arr, seed=cfg.seed, device=where)
    else:
        blocks = [(a, min(a + cfg.block_rows, off + n)) for _, off, n in segments
                  for a in range(off, off + n, cfg.block_rows)]

        def read(a: int, b: int) -> np.ndarray:
            # a plain slice of the layer: contiguous, in the store's dtype (no per-read row selection over
            # the whole store, no float32 copy: the step converts each batch)
            for st, off, n in segments:
                if off <= a < off + n:
                    return st.read_slice(cfg.layer, a - off, b - off)
            raise ClipgenError(f"rows {a}:{b} are outside the training stores")  # pragma: no cover

        source = StreamingSource(blocks, read, width, keep=keep, seed=cfg.seed, buffer_rows=budget_rows)
    info = {"layer": cfg.layer, "width": width, "stores": stores_info, "split": cfg.split,
            "train_rows": source.n_rows, "val": val_info,
            "mode": "resident" if isinstance(source, ArraySource) else "streaming"}
    return TrainingData(source=source, val=val, info=info)


def _interval_steps(samples: int | None, batch_size: int) -> int:
    if not samples or samples <= 0:
        return 0
    return max(1, round(samples / batch_size))


def _check_config(cfg: SAETrainConfig) -> None:
    for name in ("batch_size", "epochs", "expansion", "block_rows", "log_every", "keep_checkpoints"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise option_error("--" + name.replace("_", "-"), f"must be at least 1, got {getattr(cfg, name)}")
    for name in ("resample_every", "resample_max", "resample_samples", "dead_window", "val_every",
                 "checkpoint_every", "val_max_rows"):
        if getattr(cfg, name) < 0:
            raise option_error("--" + name.replace("_", "-"), f"must not be negative, got {getattr(cfg, name)}")
    if not cfg.buffer_mb > 0:
        raise option_error("--buffer-mb", f"must be positive, got {cfg.buffer_mb}")
    if cfg.resample_window is not None and cfg.resample_window < 1:
        raise option_error("--resample-window", f"must be at least 1, got {cfg.resample_window}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise option_error("--val-fraction", f"must be in [0, 1), got {cfg.val_fraction}")
    if cfg.resolved_l1() < 0 or cfg.lr <= 0:
        raise option_error("--l1" if cfg.resolved_l1() < 0 else "--lr", "must be positive")
    if cfg.activation not in ACTIVATIONS:
        raise option_error("--activation", f"unknown activation {cfg.activation!r} (one of {', '.join(ACTIVATIONS)})")
    if cfg.step_mode not in STEP_MODES:
        raise option_error("--step-mode", f"unknown step mode {cfg.step_mode!r} (one of {', '.join(STEP_MODES)})")


def _resolve_precision(spec: str, device: torch.device, paper: bool = False) -> torch.dtype:
    s = (spec or "auto").lower()
    if s == "auto":
        s = "bf16" if device.type == "cuda" and not paper else "fp32"
    if s == "fp32":
        return torch.float32
    if s == "bf16":
        return torch.bfloat16
    raise option_error("--precision", f"{spec!r} is not supported for SAE training (fp32, bf16 or auto; fp16 "
                                      "underflows the gradients)")


def _run_files(out: Path) -> list[Path]:
    return [p for p in (out / "config.json", out / LOG_FILE, out / METRICS_FILE, out / SAE_FILE,
                        out / CURVES_FILE, out / CHECKPOINT_DIR) if p.exists()]


def list_checkpoints(out: str | Path) -> dict[int, Path]:
    """Step -> checkpoint file in ``OUT/checkpoints`` (``step_0000001234.pt``)."""
    d = Path(out) / CHECKPOINT_DIR
    found = {}
    if d.is_dir():
        for p in d.glob("step_*.pt"):
            try:
                found[int(p.stem.split("_", 1)[1])] = p
            except ValueError:
                continue
    return dict(sorted(found.items()))


def _torch_load(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise file_error(path, f"unreadable SAE file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not isinstance(obj, dict):
        raise file_error(path, "not a clipgen SAE file")
    return obj


def _save_atomic(obj: Any, path: Path) -> None:
    from clipgen.artifacts import atomic_path

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:  # a file object: a full disk is then an OSError (ENOSPC), not torch's
                torch.save(obj, f)      # RuntimeError without the cause
        except OSError as e:
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, str(tmp)) from None


def _truncate_log(path: Path, max_step: int) -> None:
    """Drop log lines written after ``max_step`` (the resumed checkpoint), so a resumed run logs no duplicates."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if int(rec.get("step", 0)) <= max_step:
            keep.append(line)
    from clipgen.artifacts import write_text_atomic

    write_text_atomic(path, "".join(k + "\n" for k in keep))


def train_sae(cfg: SAETrainConfig, data: TrainingData | None = None, *, model: SparseAutoencoder | None = None,
              resume: bool = False, force: bool = False, progress: bool = True,
              callback: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train an SAE on ``data`` (default: the stores of ``cfg``) and write the run to ``cfg.out``.

    ``OUT/config.json`` (this config), ``OUT/log.jsonl`` (one JSON object per log interval, validation and
    resampling event), ``OUT/checkpoints/step_N.pt`` (model, Adam, counters; the last ``keep_checkpoints`` kept),
    ``OUT/sae.pt`` (the final SAE, see :func:`load_sae`) and ``OUT/metrics.json``. An existing run in ``OUT``
    continues from its newest checkpoint (``epochs`` may be raised to train longer; other settings are refused) unless
    ``force`` starts over; ``resume`` is accepted for compatibility and changes nothing. ``model`` replaces the
    freshly initialised SAE (tests use it to plant dead latents). ``callback(step, info)`` runs after every step.
    The run folder is written under an exclusive writer lock (:mod:`clipgen.locks`): a second process is refused.
    """
    from clipgen.locks import output_lock

    _check_config(cfg)
    if not cfg.out:
        raise option_error("--out", "an output folder is required")
    with output_lock(cfg.out):
        return _train_sae(cfg, data, model=model, resume=resume, force=force, progress=progress, callback=callback)


def _train_sae(cfg: SAETrainConfig, data: TrainingData | None = None, *, model: SparseAutoencoder | None = None,
               resume: bool = False, force: bool = False, progress: bool = True,
               callback: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    from clipgen.artifacts import to_jsonable, write_config, write_json_atomic
    from clipgen.devices import resolve_device
    from clipgen.progress import console, make_progress

    _check_config(cfg)
    if not cfg.out:
        raise option_error("--out", "an output folder is required")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise option_error("--out", f"{out} exists and is not a folder")
    existing = _run_files(out) if out.exists() else []
    # the same command continues the run in OUT (``resume`` is implied and kept for compatibility); a run stopped
    # before its first checkpoint has nothing to continue from and starts over, as does ``force``
    ckpts = {} if force else list_checkpoints(out)
    if existing and not ckpts:
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    device = resolve_device(cfg.device)
    cdt = _resolve_precision(cfg.precision, device, cfg.paper)
    step_mode = cfg.step_mode if cfg.step_mode != "auto" else ("graph" if device.type == "cuda" else "eager")
    if step_mode == "graph" and device.type != "cuda":
        raise option_error("--step-mode", "'graph' needs a CUDA device")

    from contextlib import ExitStack

    with ExitStack() as stack:
        if data is None:
            data = open_training_data(cfg, stack, device=device)
        src = data.source
        b = cfg.batch_size
        if b is None:  # the paper's batch, or one batch of every row of a smaller training set
            b = min(DEFAULT_BATCH_SIZE, src.n_rows)
            if b < DEFAULT_BATCH_SIZE:
                console.print(f"note: batch size {b}: all {src.n_rows:,} training rows (the default "
                              f"{DEFAULT_BATCH_SIZE} is more than there are); --batch-size sets another",
                              markup=False, highlight=False)
            cfg = dataclasses.replace(cfg, batch_size=b)
        spe = src.n_rows // b
        if spe == 0:
            raise option_error("--batch-size", f"{b} is larger than the {src.n_rows} training rows; pass "
                                               f"--batch-size {src.n_rows} or less (or leave it out: the default "
                                               f"fits it to the rows)")
        total_steps = cfg.epochs * spe
        l1 = cfg.resolved_l1()

        ck = None
        if ckpts:
            ck_step, ck_path = next(reversed(ckpts.items()))
            ck = _torch_load(ck_path)
            _check_resume(ck, ck_path, cfg, data.info)
        if model is None:
            scale = 1.0
            if cfg.scale_inputs:
                if ck is not None:
                    scale = float(ck["arch"]["input_scale"])
                else:
                    sample = src.sample(65_536, np.random.default_rng([cfg.seed, 0, _RNG_INIT]))
                    mean_norm = float(torch.linalg.vector_norm(sample.double(), dim=1).mean())
                    if not mean_norm > 0:
                        raise option_error("--scale-inputs", "the training rows are all zero")
                    scale = math.sqrt(src.d) / mean_norm
            arch = SAEArch(d_in=src.d, d_sae=cfg.expansion * src.d, activation=cfg.activation,
                           k=cfg.k if cfg.activation == "topk" else None, input_scale=scale)
            model = SparseAutoencoder(arch, seed=cfg.seed, init="published" if cfg.paper else "default")
        elif model.arch.d_in != src.d:
            raise option_error("--layer", f"the SAE expects width {model.arch.d_in}, the training rows have {src.d}")
        model = model.to(device)
        arch = model.arch
        opt = make_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps)
        kernel = FusedStep(model, opt, l1=l1, compute_dtype=cdt, project_decoder_grad=cfg.paper)
        step, resample_checks, revived, last_log, revived_since_log = 0, 0, 0, 0, 0
        if ck is not None:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            for p in model.parameters():  # load_state_dict keeps grads; refresh in case of a dtype/device move
                p.grad = torch.zeros_like(p)
            step, resample_checks, revived = int(ck["step"]), int(ck["resample_checks"]), int(ck["revived"])
            last_log, revived_since_log = int(ck["last_log_step"]), int(ck.get("revived_since_log", 0))
            kernel.last_fired.copy_(ck["last_fired"])
            kernel.stats.copy_(ck["stats"])
            kernel.step_t.fill_(step)
            _truncate_log(out / LOG_FILE, step)
            console.print(f"resuming {out} from step {step} ({ck_path.name})")
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, "sae train", cfg)

        runner: Callable[[torch.Tensor], None] = kernel if step_mode == "eager" else GraphStep(kernel, b, src.d)
        static = runner.static_x if isinstance(runner, GraphStep) else None
        log_steps = _interval_steps(cfg.log_every, b)
        val_steps = _interval_steps(cfg.val_every, b) if data.val is not None else 0
        ckpt_steps = _interval_steps(cfg.checkpoint_every, b)
        res_steps = _interval_steps(cfg.resample_every, b)
        res_window = _interval_steps(cfg.resample_window or cfg.resample_every, b)
        dead_window = _interval_steps(cfg.dead_window, b) or 1
        last_train: dict[str, Any] = {}
        last_val: dict[str, Any] | None = None

        def record(rec: dict[str, Any]) -> None:
            with open(out / LOG_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(to_jsonable(rec)) + "\n")

        def save_checkpoint(s: int) -> None:
            state = {"format": CHECKPOINT_FORMAT, "version": SAE_VERSION, "arch": dataclasses.asdict(arch),
                     "model": model.state_dict(), "optimizer": opt.state_dict(), "step": s,
                     "resample_checks": resample_checks, "revived": revived, "last_log_step": last_log,
                     "revived_since_log": revived_since_log,
                     "last_fired": kernel.last_fired.cpu(), "stats": kernel.stats.cpu(),
                     "train_config": to_jsonable(cfg), "data": to_jsonable(data.info)}
            _save_atomic(state, out / CHECKPOINT_DIR / f"step_{s:010d}.pt")
            existing_ckpts = list_checkpoints(out)
            for old in list(existing_ckpts)[:-cfg.keep_checkpoints]:
                existing_ckpts[old].unlink(missing_ok=True)

        t0 = time.perf_counter()
        t_log, step_log = t0, step
        start_step = step
        already = step >= total_steps
        with make_progress(disable=not progress) as bar:
            task = bar.add_task(f"sae {cfg.layer} ({arch.d_in}->{arch.d_sae})", total=total_steps, completed=step)
            t_bar = 0.0
            while step < total_steps:
                epoch, within = divmod(step, spe)
                for x in src.batches(epoch, within, b, out=static):
                    if x.device != device:
                        x = x.to(device, non_blocking=True)
                    runner(x)
                    step += 1
                    if res_steps and step % res_steps == 0 and (cfg.resample_max == 0
                                                                 or resample_checks < cfg.resample_max):
                        resample_checks += 1
                        dead = torch.nonzero(step - kernel.last_fired >= res_window).flatten()
                        rng = np.random.default_rng([cfg.seed, step, _RNG_RESAMPLE])
                        n = resample_dead_latents(model, opt, dead, src.sample(cfg.resample_samples, rng), rng,
                                                  l1=l1 if cfg.paper else 0.0)
                        if n:
                            kernel.last_fired.index_fill_(0, dead, step)
                        revived += n
                        revived_since_log += n
                        record({"kind": "resample", "step": step, "samples": step * b, "check": resample_checks,
                                "resampled": n})
                    if step % log_steps == 0 or step == total_steps:
                        st = kernel.stats.tolist()
                        kernel.stats.zero_()
                        rows = (step - last_log) * b
                        now = time.perf_counter()
                        mse = st[0] / (rows * arch.d_in)
                        dead_now = int((step - kernel.last_fired >= dead_window).sum())
                        last_train = {"kind": "train", "step": step, "samples": step * b, "epoch": step / spe,
                                      "loss": mse + l1 * st[2] / rows, "mse": mse, "l1": st[2] / rows,
                                      "l1_loss": l1 * st[2] / rows, "l0": st[3] / rows,
                                      "fve": 1.0 - st[0] / st[1] if st[1] > 0 else float("nan"),
                                      "dead": dead_now, "dead_fraction": dead_now / arch.d_sae,
                                      "resampled": revived_since_log,
                                      "samples_per_s": (step - step_log) * b / max(now - t_log, 1e-9)}
                        record(last_train)
                        last_log, t_log, step_log, revived_since_log = step, now, step, 0
                        bar.update(task, description=f"sae {cfg.layer} loss {last_train['loss']:.4g} "
                                                     f"L0 {last_train['l0']:.1f} dead {dead_now}")
                    if val_steps and step % val_steps == 0 and step < total_steps:
                        last_val = evaluate(model, data.val, l1)
                        record({"kind": "val", "step": step, "samples": step * b, **last_val})
                    if ckpt_steps and step % ckpt_steps == 0 and step < total_steps:
                        save_checkpoint(step)
                    if callback is not None:
                        callback(step, {"model": model, "optimizer": opt, "step": kernel})
                    now = time.perf_counter()
                    if now - t_bar > 0.2 or step == total_steps:
                        bar.update(task, completed=step)
                        t_bar = now
                    if step >= total_steps:
                        break
        seconds = time.perf_counter() - t0
        if not already:
            save_checkpoint(step)
        if data.val is not None:
            last_val = evaluate(model, data.val, l1)
            if not already:
                record({"kind": "val", "step": step, "samples": step * b, **last_val})
        if not last_train:
            last_train = _last_log_record(out / LOG_FILE, "train")
        # the final model's statistics: a pass over (a seeded sample of) the training rows, not the mean of the last
        # log interval (which can span the whole run)
        rows_final = src.sample(FINAL_EVAL_ROWS, np.random.default_rng([cfg.seed, step, _RNG_FINAL]))
        final = {"kind": "final", "step": step, "samples": step * b, "epoch": step / spe,
                 **evaluate(model, rows_final, l1)}
        if not already:
            record(final)
        trained = (step - start_step) * b
        sps = trained / seconds if seconds > 0 and trained else 0.0
        save_sae(out / SAE_FILE, model, layer=cfg.layer, steps=step, samples=step * b, train_config=cfg,
                 data=data.info)
        metrics = {"steps": step, "samples": step * b, "epochs": cfg.epochs, "steps_per_epoch": spe,
                   "train_rows": src.n_rows, "layer": cfg.layer, "arch": dataclasses.asdict(arch), "l1": l1,
                   "final": final, "final_train": last_train, "val": last_val, "resample_checks": resample_checks,
                   "revived": revived, "seconds_this_session": seconds, "samples_per_s_this_session": sps,
                   "device": str(device), "precision": str(cdt).replace("torch.", ""), "step_mode": step_mode}
        write_json_atomic(out / METRICS_FILE, metrics)
        plot_curves(out)
        return TrainResult(out=out, steps=step, samples=step * b, epochs=cfg.epochs, final=final, val=last_val,
                           resample_checks=resample_checks, revived=revived, seconds=seconds, samples_per_s=sps,
                           already_complete=already)


CURVES_FILE = "curves.png"


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (unreadable lines skipped)."""
    recs = []
    p = Path(path)
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return recs


def curves_figure(records: Sequence[dict[str, Any]]):
    """Loss, L0, dead latents and variance explained over training steps: the training log's intervals (means
    over each interval), validation passes and the final model's pass (a Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = (("loss", "loss (mse + l1)"), ("l0", "L0 (active latents per row)"), ("dead", "dead latents"),
              ("fve", "variance explained"))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for kind, style in (("train", {"marker": "o", "ms": 3, "lw": 1.4, "label": "training (interval mean)"}),
                            ("val", {"marker": "s", "ms": 4, "lw": 1.0, "ls": "--", "label": "validation"}),
                            ("final", {"marker": "*", "ms": 11, "lw": 0, "color": "crimson",
                                       "label": "final model (training rows)"})):
            pts = [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, **style)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_curves(out: str | Path) -> Path:
    """Write ``OUT/curves.png`` from ``OUT/log.jsonl`` (atomically)."""
    import matplotlib.pyplot as plt

    from clipgen.artifacts import atomic_path

    path = Path(out) / CURVES_FILE
    fig = curves_figure(read_log(Path(out) / LOG_FILE))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _last_log_record(path: Path, kind: str) -> dict[str, Any]:
    last: dict[str, Any] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == kind:
                last = rec
    return last


def _check_resume(ck: dict, path: Path, cfg: SAETrainConfig, info: dict[str, Any]) -> None:
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise file_error(path, "not a clipgen SAE checkpoint")
    if int(ck.get("version", 0)) > SAE_VERSION:
        raise file_error(path, f"checkpoint version {ck.get('version')} is newer than this clipgen reads")
    old = ck.get("train_config", {})
    from clipgen.artifacts import to_jsonable

    new = to_jsonable(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(SAETrainConfig)}
    for key in FROZEN_ON_RESUME:
        if old.get(key, defaults.get(key)) != new.get(key):  # a setting newer than the checkpoint: its default
            raise option_error("--" + key.replace("_", "-"),
                               f"the run in {path.parent.parent} was trained with {old.get(key)!r}, now "
                               f"{new.get(key)!r}; use the same value to continue it, or pass --force to start over")
    if ck.get("data") != to_jsonable(info):
        raise option_error("--out", f"the training data differ from those of {path} (other stores, layer or rows); "
                                    "use the same data to continue it, or pass --force to start over")


# ---------------------------------------------------------------------------------------------------------------
# Loading


def save_sae(path: str | Path, model: SparseAutoencoder, *, layer: str, steps: int = 0, samples: int = 0,
             train_config: Any = None, data: dict[str, Any] | None = None) -> Path:
    """Write a final SAE file (what :func:`load_sae` and ``clipgen sae features`` read), atomically."""
    from clipgen.artifacts import to_jsonable

    obj = {"format": SAE_FORMAT, "version": SAE_VERSION, "arch": dataclasses.asdict(model.arch),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "layer": layer,
           "steps": int(steps), "samples": int(samples), "train_config": to_jsonable(train_config or {}),
           "data": to_jsonable(data or {})}
    _save_atomic(obj, Path(path))
    return Path(path)


def load_sae(path: str | Path, device: torch.device | str = "cpu") -> tuple[SparseAutoencoder, dict[str, Any]]:
    """An SAE from ``OUT/sae.pt``, a training checkpoint, or a run folder (its ``sae.pt``, else newest checkpoint).

    Returns the model (eval mode) and its record: ``layer``, ``arch``, ``steps``, ``train_config``, ``data``, ``path``.
    """
    p = Path(path)
    if p.is_dir():
        if (p / SAE_FILE).is_file():
            p = p / SAE_FILE
        else:
            ck = list_checkpoints(p)
            if not ck:
                raise file_error(p, "no sae.pt and no checkpoints here (not a 'clipgen sae train' output)")
            p = next(reversed(ck.values()))
    elif not p.is_file():
        raise file_error(p, "no such SAE file or folder")
    obj = _torch_load(p)
    fmt = obj.get("format")
    if fmt == SAE_FORMAT:
        state = obj["state_dict"]
    elif fmt == CHECKPOINT_FORMAT:
        state = obj["model"]
    else:
        raise file_error(p, f"not a clipgen SAE (format {fmt!r})")
    if int(obj.get("version", 0)) > SAE_VERSION:
        raise file_error(p, f"SAE version {obj.get('version')} is newer than this clipgen reads ({SAE_VERSION})")
    try:
        arch = SAEArch(**obj["arch"])
        model = SparseAutoencoder(arch, seed=0)
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as e:
        raise file_error(p, f"damaged SAE file ({type(e).__name__})") from None
    model.to(device).eval()
    cfgd = obj.get("train_config", {})
    info = {"path": str(p), "layer": obj.get("layer", cfgd.get("layer")), "arch": obj["arch"],
            "steps": obj.get("steps", obj.get("step")), "train_config": cfgd, "data": obj.get("data", {})}
    return model, info


def check_width(sae_path: str | Path, arch: SAEArch, store_path: str | Path, layer: str, width: int) -> None:
    """One-line error when an SAE does not fit the stored layer."""
    if arch.d_in != width:
        raise file_error(sae_path, f"SAE expects {arch.d_in}-wide inputs, but layer {layer!r} of {store_path} is "
                                   f"{width} wide (train an SAE on this layer, or pick the layer it was trained on)")
