"""A gallery of formats written with :class:`tensorpeft.decomp.TensorNetwork`, each tested and usable in a model.

Every entry is a module-level factory ``name(stack, out_features, in_features, rank) -> format``, the signature
:class:`tensorpeft.CustomConfig <tensorpeft.nn.CustomConfig>` calls, so any of them fine-tunes a model:

.. code-block:: python

   import tensorpeft as tp
   from tensorpeft import gallery

   cfg = tp.CustomConfig(factory=gallery.krona, rank=16, target_modules=["query", "value"])

Each module's docstring gives the formula of ΔW, the parameter count (with a worked number) and the paper;
:data:`GALLERY` lists them all. A saved adapter names its factory ``"tensorpeft.gallery:<name>"``, looked up in
:data:`GALLERY` when it is loaded: part of the package, it needs no ``trust_custom_factories``, and no other name
under ``tensorpeft.gallery`` is accepted from a file.
"""

from __future__ import annotations

from typing import NamedTuple

from ._block_term import block_term
from ._fact import fact_tk, fact_tt
from ._krona import krona
from ._lora_krona import lora_krona
from ._mpo import mpo
from ._tensor_ring import tensor_ring
from ._tied import tied
from ._vera import VeRA, vera


class GalleryEntry(NamedTuple):
    """One format of the gallery: its name, its factory and its paper.

    Attributes
    ----------
    name : str
        The factory's name; a saved adapter records it as ``"tensorpeft.gallery:<name>"``.
    factory : callable
        ``factory(stack, out_features, in_features, rank) -> tensorpeft.decomp.TensorNetwork``.
    paper : str
        Authors, year and title of the method's paper.

    Examples
    --------
    >>> from tensorpeft import gallery
    >>> entry = next(e for e in gallery.GALLERY if e.name == "krona")
    >>> entry.factory is gallery.krona, entry.paper.startswith("Edalati")
    (True, True)
    """

    name: str
    factory: object
    paper: str


#: Every format of the gallery, in the order of the docs page. Adding one: its module, an import above, one line.
GALLERY: tuple[GalleryEntry, ...] = (
    GalleryEntry("tensor_ring", tensor_ring, "Zhao, Zhou, Xie, Zhang, Cichocki (2016), Tensor Ring Decomposition"),
    GalleryEntry("krona", krona, "Edalati et al. (2022), KronA: Parameter Efficient Tuning with Kronecker Adapter"),
    GalleryEntry("mpo", mpo, "Novikov, Podoprikhin, Osokin, Vetrov (2015), Tensorizing Neural Networks"),
    GalleryEntry("fact_tt", fact_tt, "Jie, Deng (2023), FacT: Factor-Tuning for Lightweight Adaptation on ViT"),
    GalleryEntry("fact_tk", fact_tk, "Jie, Deng (2023), FacT: Factor-Tuning for Lightweight Adaptation on ViT"),
    GalleryEntry("tied", tied, "Bershatsky et al. (2024), LoTR: Low Tensor Rank Weight Adaptation (tied variant)"),
    GalleryEntry(
        "block_term", block_term, "De Lathauwer (2008), Decompositions of a Higher-Order Tensor in Block Terms, Part II"
    ),
    GalleryEntry("lora_krona", lora_krona, "Hu et al. (2021), LoRA; Edalati et al. (2022), KronA (their sum)"),
    GalleryEntry("vera", vera, "Kopiczko, Blankevoort, Asano (2024), VeRA: Vector-based Random Matrix Adaptation"),
)

__all__ = ["GALLERY", "GalleryEntry", "VeRA", *(entry.name for entry in GALLERY)]
