"""WeLore compression of a torch model: low-rank components become trainable factored linears."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the universal torch alias
from torch import nn

from .. import decomp
from ..decomp.validate import check_fraction
from ._grouping import check_not_adapted
from ._linear import dense_weight, linear_shape, parent_module
from ._selector import ModuleSelector
from ._targets import find_targets

__all__ = ["LowRankLinear", "compress_low_rank"]


class LowRankLinear(nn.Module):
    r"""A linear layer stored as two factors: ``y = U (V x) + b``.

    Parameters
    ----------
    U : torch.Tensor
        ``(out_features, rank)``.
    V : torch.Tensor
        ``(rank, in_features)``, same dtype and device as ``U``.
    bias : torch.Tensor, optional
        ``(out_features,)``; an ``nn.Parameter`` is kept as is (its ``requires_grad`` too).

    Attributes
    ----------
    in_features, out_features, rank : int

    Raises
    ------
    TypeError
        If ``U``, ``V`` or ``bias`` is not a floating-point tensor.
    ValueError
        If the shapes do not chain (or the rank is 0), or dtypes/devices differ.

    Notes
    -----
    :math:`r (d_\text{in} + d_\text{out})` parameters instead of :math:`d_\text{in} d_\text{out}`, and as
    many multiply-adds per token. ``forward`` never forms ``U V``; :attr:`weight` does, for code that
    reads a linear layer's ``.weight`` directly (``nn.MultiheadAttention``'s ``out_proj``): it is
    differentiable but costs a ``d_out × r × d_in`` product per access.

    Examples
    --------
    >>> import torch
    >>> from tensorpeft.nn import LowRankLinear
    >>> layer = LowRankLinear(torch.randn(6, 2), torch.randn(2, 5), torch.zeros(6))
    >>> layer, layer(torch.randn(3, 5)).shape
    (LowRankLinear(in_features=5, out_features=6, rank=2, bias=True), torch.Size([3, 6]))
    """

    def __init__(self, U: torch.Tensor, V: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        for name, t in (("U", U), ("V", V), ("bias", bias)):
            if t is None and name == "bias":
                continue
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"`{name}` must be a floating-point torch.Tensor, got {what}.")
        if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[0] or U.shape[1] == 0:
            raise ValueError(
                f"`U` (out, rank) and `V` (rank, in) must chain with rank >= 1, got shapes {tuple(U.shape)} and "
                f"{tuple(V.shape)}."
            )
        if U.dtype != V.dtype or U.device != V.device:
            raise ValueError(
                f"`U` and `V` must share dtype and device, got {U.dtype}/{U.device} and {V.dtype}/{V.device}."
            )
        if bias is not None and tuple(bias.shape) != (U.shape[0],):
            raise ValueError(f"`bias` must have shape ({U.shape[0]},), got {tuple(bias.shape)}.")
        if bias is not None and (bias.dtype != U.dtype or bias.device != U.device):
            raise ValueError(
                f"`bias` must have the dtype and device of `U` ({U.dtype}/{U.device}), got {bias.dtype}/{bias.device}."
            )
        self.U = U if isinstance(U, nn.Parameter) else nn.Parameter(U)
        self.V = V if isinstance(V, nn.Parameter) else nn.Parameter(V)
        if bias is None or isinstance(bias, nn.Parameter):
            self.bias = bias
        else:
            self.bias = nn.Parameter(bias)
        self.out_features, self.rank = (int(n) for n in U.shape)
        self.in_features = int(V.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``U (V x) + b`` over the last dimension of ``x``; ``U V`` is never formed."""
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``U V`` ``(out_features, in_features)``, differentiable (computed at each access)."""
        return self.U @ self.V

    def extra_repr(self) -> str:
        """``in_features``, ``out_features``, ``rank`` and whether there is a bias."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"bias={self.bias is not None}"
        )


def _factors(layer: nn.Module, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``U √Σ_k`` and ``√Σ_k Vᵀ`` of the float64 SVD of the layer's ``(out, in)`` weight, in its dtype."""
    w = dense_weight(layer)
    u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w.dtype).contiguous(), (root[:, None] * vh[:rank]).to(w.dtype).contiguous()


def compress_low_rank(
    model: nn.Module,
    reduction: float = 0.5,
    min_ratio: float = 0.5,
    *,
    target_modules="all-linear",
    exclude_modules=None,
) -> decomp.WeLoreResult:
    r"""WeLore: factor the low-rank weight matrices of ``model`` into trainable pairs, freeze the rest.

    One global threshold on the normalized singular values of every target matrix
    (:func:`tensorpeft.decomp.welore_ranks`) gives each a rank ``k``; the matrices that lose more than
    ``min_ratio`` of their singular values are *low-rank components* (LRCs) and become
    :class:`LowRankLinear` layers ``y = U_k (V_k x) + b`` with :math:`U_k = U \sqrt{\Sigma_k}` and
    :math:`V_k = \sqrt{\Sigma_k} V^\top` from the SVD of the weight (computed in float64, stored in the
    weight's dtype). Every other parameter of ``model`` — the dense N-LRC matrices, biases, embeddings,
    norms, heads — is frozen, so fine-tuning trains the LRC factors only (unfreeze a task head yourself).

    Parameters
    ----------
    model : nn.Module
        Any torch model with ``nn.Linear`` or transformers ``Conv1D`` layers (the latter store their
        weight ``(in, out)``; ranks and factors are those of the ``(out, in)`` matrix). Modified in
        place, and only once every check below has passed.
    reduction : float
        Requested parameter reduction over the target matrices, ``0 <= reduction < 1`` (at least this
        share of their weights' parameters is removed).
    min_ratio : float
        A matrix is an LRC when more than this share of its singular values is pruned (WeLore: 0.5).
    target_modules : "all-linear", list of str or str
        Which layers are candidates: ``"all-linear"`` (every linear layer except the output
        embedding), a list of name suffixes, or a full-match regex — as in :class:`AdapterConfig`.
    exclude_modules : list of str or str, optional
        Layers never touched (same syntax, no ``"all-linear"``).

    Returns
    -------
    decomp.WeLoreResult
        ``tau``, the achieved ``reduction``, ``params_before``/``params_after`` over the target weights
        (biases are not counted: they are unchanged), and per module name a
        :class:`~tensorpeft.decomp.WeLoreMatrix` with its ``(out, in)`` shape, kept ``rank``,
        ``is_low_rank`` and parameter counts. ``print(report)`` shows the table. The trainable
        parameters of ``model`` afterwards are exactly the LRCs' ``params_after``.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``, or an argument has the wrong type.
    ValueError
        With ``model`` unchanged: ``reduction`` or ``min_ratio`` outside ``[0, 1)`` or not reachable
        (the message gives the largest reachable reduction), a ``target_modules`` entry that matches no
        linear layer, a target layer shared under two names, a weight with NaN or infinite values, or a
        model that already holds tensorpeft adapters.

    Notes
    -----
    Replacing an LRC keeps its best rank-``k`` approximation, so the layer's error is the spectral tail,
    :math:`\|W - U_k V_k\|_F = \sqrt{\sum_{i > k} \sigma_i^2}`. The search over thresholds and its edge
    cases are those of :func:`~tensorpeft.decomp.welore_ranks`; every singular value is computed once
    (``svdvals``), and the full SVD only for the LRCs.

    References
    ----------
    Jaiswal et al., "From GaLore to WeLore: How Low-Rank Weights Non-uniformly Emerge from Low-Rank
    Gradients", arXiv:2407.11239.

    Examples
    --------
    Two layers of rank 2 (plus a little noise) and a full-rank one; a 50 % reduction factors the
    first two at rank 2:

    >>> import torch, tensorpeft as tp
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(3)])
    >>> with torch.no_grad():
    ...     for layer in model[:2]:
    ...         _ = layer.weight.copy_(torch.randn(16, 2) @ torch.randn(2, 16) / 4 + 1e-3 * torch.randn(16, 16))
    >>> report = tp.compress_low_rank(model, reduction=0.5)
    >>> print(report)
    WeLore tau=...: reduction 0.5000 (target 0.5000), 768 -> 384 params
    0  LRC    k=2/16  64/256
    1  LRC    k=2/16  64/256
    2  dense  k=.../16  256/256
    >>> model[0], model[2].weight.requires_grad
    (LowRankLinear(in_features=16, out_features=16, rank=2, bias=True), False)
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)
    128
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    check_fraction(reduction, "reduction")
    check_fraction(min_ratio, "min_ratio")
    selector = ModuleSelector.of(target_modules, exclude_modules)
    check_not_adapted(model)
    targets = find_targets(model, selector)

    names_of: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(name)
    spectra = {}
    for name, layer in targets:
        if len(names_of[id(layer)]) > 1:
            raise ValueError(
                f"`model` reaches layer {name!r} under several names {names_of[id(layer)]}; a shared layer "
                "cannot be replaced in one place only. Exclude it with `exclude_modules`."
            )
        w = dense_weight(layer)
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"the weight of {name!r} contains NaN or infinite values; nothing was changed.")
        sigma = torch.linalg.svdvals(w.to(torch.float64)).cpu().numpy()
        spectra[name] = decomp.Spectrum(sigma, linear_shape(layer))
    report = decomp.welore_ranks(spectra, reduction=reduction, min_ratio=min_ratio)

    layers = dict(targets)
    replacements = {}
    for name in report.low_rank:
        layer = layers[name]
        U, V = _factors(layer, report.matrices[name].rank)
        replacements[name] = LowRankLinear(U, V, layer.bias)

    # Every check has passed: from here on nothing depends on user input.
    for p in model.parameters():
        p.requires_grad_(False)
    for name, new in replacements.items():
        parent, child = parent_module(model, name)
        setattr(parent, child, new)
        new.U.requires_grad_(True)
        new.V.requires_grad_(True)
    return report
