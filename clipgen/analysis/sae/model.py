"""The SAE models: one interface (:class:`SparseAutoencoder`), one class per activation, :func:`create_sae` by name.

Every variant has the same parameters (state-dict keys ``b_pre``, ``W_enc``, ``b_enc``, ``W_dec``), initialisation,
input scaling and tied-bias encode/decode; a variant only says how pre-activations become latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clipgen.analysis.sae.config import ACTIVATIONS
from clipgen.errors import ConfigFieldError

#: Initialisations: ``default`` = nn.Linear's (encoder weight and bias uniform in +-1/sqrt(d_in)), dictionary
#: vectors uniform in [-1, 1] then unit-normalised; ``published`` = the ``sparse_autoencoder`` library's on its
#: (components=1, d_sae, d_in) encoder weight: ``kaiming_uniform_(nonlinearity="relu")``, whose fan-in of a 3-D
#: tensor is d_sae * d_in, i.e. bound sqrt(6 / (d_sae d_in)) (1024 -> 4096: 1/836); bias bound 1/sqrt(d_sae)
#: (weight.size(1)); dictionary vectors standard normal then unit-normalised.
INITS = ("default", "published")


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
            raise ConfigFieldError("expansion", f"SAE sizes must be positive (d_in={self.d_in}, d_sae={self.d_sae})")
        if self.activation not in ACTIVATIONS:
            raise ConfigFieldError("activation",
                                   f"unknown activation {self.activation!r} (one of {', '.join(ACTIVATIONS)})")
        if self.activation == "topk" and not (self.k and 1 <= self.k <= self.d_sae):
            raise ConfigFieldError("k", f"TopK needs 1 <= k <= {self.d_sae} latents, got {self.k}")
        if not (self.input_scale > 0 and math.isfinite(self.input_scale)):
            raise ConfigFieldError("scale_inputs", f"invalid input scale {self.input_scale}")


class SparseAutoencoder(nn.Module):
    """Tied-bias sparse autoencoder with unit-norm dictionary vectors (rows of ``W_dec``): the shared interface.

    Parameters: ``b_pre`` (d_in), ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in).
    :meth:`encode` and :meth:`decode` work in the units of the stored activations (the input scale is applied and
    undone inside); the training loss is computed on scaled inputs. A variant implements :meth:`activate` (and
    :meth:`activate_`, the same on a tensor it may overwrite). ``SparseAutoencoder(arch)`` builds the variant
    registered for ``arch.activation`` (as ``pathlib.Path`` builds its flavour), so it equals
    ``create_sae(**asdict(arch))``.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is SparseAutoencoder:
            arch = args[0] if args else kwargs.get("arch")
            cls = SAE_CLASSES.get(getattr(arch, "activation", None), cls)  # unknown: arch.check() refuses it
        return super().__new__(cls)

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
        """Latents from pre-activations (n, d_sae); ``pre`` is left as it is."""
        raise NotImplementedError

    def activate_(self, pre: torch.Tensor) -> torch.Tensor:
        """:meth:`activate` for a ``pre`` the caller no longer needs (it may be overwritten): the fused step's."""
        raise NotImplementedError

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


class ReLUSAE(SparseAutoencoder):
    """``f = ReLU((x - b_pre) W_enc + b_enc)``: the paper's SAE."""

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def activate_(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu_(pre)


class TopKSAE(SparseAutoencoder):
    """Keeps the ``arch.k`` largest pre-activations per sample (then ReLU: at most ``k`` latents are active)."""

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(int(self.arch.k), dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    def activate_(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(int(self.arch.k), dim=1)
        return torch.zeros_like(pre).scatter_(1, idx, torch.relu_(vals))


#: The SAE variant of each activation name (:data:`ACTIVATIONS`).
SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {"relu": ReLUSAE, "topk": TopKSAE}


def create_sae(activation: str, d_in: int, d_sae: int, *, k: int | None = None, input_scale: float = 1.0,
               seed: int | None = 0, device: torch.device | str | None = None,
               init: str = "default") -> SparseAutoencoder:
    """The SAE variant named ``activation`` (:data:`ACTIVATIONS`), freshly initialised (see :data:`INITS`)."""
    arch = SAEArch(d_in=d_in, d_sae=d_sae, activation=activation, k=k, input_scale=input_scale)
    arch.check()
    return SAE_CLASSES[activation](arch, seed=seed, device=device, init=init)


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
