"""The SAE training step: analytic gradients fused with Adam and the decoder renormalisation (:class:`FusedStep`),
captured once in a CUDA graph and replayed on CUDA (:class:`GraphStep`)."""

from __future__ import annotations

import torch

from clipgen.analysis.sae.model import SparseAutoencoder
from clipgen.errors import ConfigFieldError


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
        f = m.activate_(pre)
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
            raise ConfigFieldError("step_mode", "'graph' needs a CUDA device")
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

