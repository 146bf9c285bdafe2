"""Token clusters for the DynaSpec router: the vocabulary grouped by output embedding (faiss k-means).

Cluster sizes are bounded so that selecting a cluster has a predictable cost:
  * k-means runs on the L2-normalised LM-head rows (cosine geometry, as the head scores tokens by dot product);
  * tokens are then assigned to the nearest centroid that still has room (`max_cluster_size`), closest tokens
    first, searching each token's `candidates` nearest centroids; a token whose candidates are all full goes to the
    least-filled cluster. So no cluster exceeds the bound ("oversized" clusters overflow into their neighbours);
  * clusters left empty by k-means or by the assignment are dropped and the rest renumbered, so every cluster id in
    a `TokenClusters` has at least one token.

`TokenClusters.order` lists token ids cluster by cluster: a shortlist made of whole clusters is a set of contiguous
ranges of that order, which is how the router shortlist reads LM-head rows without gathering them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

CLUSTERS_NAME = "evospec_clusters.safetensors"


@dataclass
class TokenClusters:
    """Attributes:
    order: `(vocab_size,)` token ids sorted by cluster.
    offsets: `(num_clusters + 1,)`: cluster `c` is `order[offsets[c]:offsets[c + 1]]`.
    cluster_of: `(vocab_size,)` cluster id of each token.
    """

    order: torch.Tensor
    offsets: torch.Tensor
    cluster_of: torch.Tensor

    @property
    def num_clusters(self) -> int:
        return self.offsets.numel() - 1

    @property
    def vocab_size(self) -> int:
        return self.order.numel()

    def sizes(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def tokens_of(self, clusters: torch.Tensor) -> torch.Tensor:
        """Token ids of the given clusters, concatenated in cluster order."""
        return torch.cat([self.order[self.offsets[c] : self.offsets[c + 1]] for c in clusters.tolist()])

    @classmethod
    def from_assignment(cls, cluster_of: torch.Tensor) -> "TokenClusters":
        """From a `(vocab_size,)` cluster id per token; empty clusters are dropped and the rest renumbered."""
        used, cluster_of = torch.unique(cluster_of.long(), return_inverse=True)
        order = torch.argsort(cluster_of, stable=True)
        counts = torch.bincount(cluster_of, minlength=used.numel())
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return cls(order=order, offsets=offsets, cluster_of=cluster_of)

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        save_file({"order": self.order.int(), "offsets": self.offsets.long()}, os.path.join(folder, CLUSTERS_NAME))

    @classmethod
    def load(cls, folder: str | os.PathLike, vocab_size: int | None = None) -> "TokenClusters":
        from safetensors.torch import load_file

        path = os.path.join(folder, CLUSTERS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing; build clusters with `python scripts/train_router.py`.")
        try:
            tensors = load_file(path)
            order, offsets = tensors["order"].long(), tensors["offsets"].long()
            if sorted(order.tolist()) != list(range(order.numel())) or offsets[0] != 0 or offsets[-1] != order.numel():
                raise ValueError("order is not a permutation of the vocabulary, or offsets do not cover it")
            if (offsets[1:] <= offsets[:-1]).any():
                raise ValueError("a cluster is empty or offsets decrease")
        except Exception as err:
            raise ValueError(f"{path} is corrupt: {err}") from err
        if vocab_size is not None and order.numel() != vocab_size:
            raise ValueError(f"{path} clusters a vocabulary of {order.numel()} tokens, not {vocab_size}.")
        cluster_of = torch.empty_like(order)
        cluster_of[order] = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets[1:] - offsets[:-1])
        return cls(order=order, offsets=offsets, cluster_of=cluster_of)


def cluster_vocabulary(
    head_weight: torch.Tensor,
    num_clusters: int,
    max_cluster_size: int | None = None,
    candidates: int = 16,
    niter: int = 20,
    seed: int = 0,
) -> TokenClusters:
    """Clusters the rows of an LM head with faiss k-means, with cluster sizes bounded by `max_cluster_size`.

    Default bound: twice the mean size. See the module docstring for the assignment rule.
    """
    import faiss

    vectors = head_weight.detach().float().cpu().numpy()
    vectors = np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
    vocab_size, dim = vectors.shape
    if not 1 <= num_clusters <= vocab_size:
        raise ValueError(f"num_clusters must be in [1, {vocab_size}], got {num_clusters}")
    capacity = max_cluster_size or 2 * -(-vocab_size // num_clusters)
    if capacity * num_clusters < vocab_size:
        raise ValueError(f"max_cluster_size={capacity} x num_clusters={num_clusters} cannot hold {vocab_size} tokens")
    kmeans = faiss.Kmeans(dim, num_clusters, niter=niter, seed=seed, spherical=True, verbose=False)
    kmeans.train(vectors)
    similarity, nearest = kmeans.index.search(vectors, min(candidates, num_clusters))

    fill = np.zeros(num_clusters, dtype=np.int64)
    cluster_of = np.full(vocab_size, -1, dtype=np.int64)
    # closest tokens choose first: they are the ones a cluster is really about
    for token in np.argsort(-similarity[:, 0], kind="stable"):
        for c in nearest[token]:
            if fill[c] < capacity:
                break
        else:
            c = int(np.argmin(fill))
        cluster_of[token] = c
        fill[c] += 1
    return TokenClusters.from_assignment(torch.from_numpy(cluster_of))
