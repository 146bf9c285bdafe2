"""DynaSpec's cluster router: picks, at every draft step, the token clusters the next token is likely in.

`ClusterRouter` is a light meta-classifier from the drafter's final hidden state to cluster scores, trained by
`evospec-hf train-router` on the target's next-token distribution. `RoutedHead` turns its choice into logits:
the LM-head rows are kept in a cluster-contiguous copy (`clusters.order`), so the rows of a selected cluster are
one contiguous block, read in place. Clusters are added best first until the step's token budget is spent
(`RoutedHead.ranked_clusters`, the one place that rule lives). The budget is an argument, not state: one
`RoutedHead` serves every `generate` call on a drafter, whatever each call's shortlist size.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import weakref

import torch
from torch import nn

from ..utils import drafter_folder
from .clusters import TokenClusters

ROUTER_CONFIG = "evospec_router.json"
ROUTER_WEIGHTS = "evospec_router.safetensors"


class ClusterRouter(nn.Module):
    """`(num_positions, hidden_size)` -> `(num_positions, num_clusters)` cluster scores (logits).

    Args:
        hidden_size: the drafter's hidden size.
        num_clusters: number of token clusters.
        inner_size: width of one hidden layer; 0 makes the router a single linear layer.
    """

    def __init__(self, hidden_size: int, num_clusters: int, inner_size: int = 0):
        super().__init__()
        self.config = {"hidden_size": hidden_size, "num_clusters": num_clusters, "inner_size": inner_size}
        if inner_size:
            self.net = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.GELU(), nn.Linear(inner_size, num_clusters))
        else:
            self.net = nn.Linear(hidden_size, num_clusters)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.to(self.net[0].weight.dtype if self.config["inner_size"] else self.net.weight.dtype))

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        # float16 on disk (half the size); `load` casts back to float32
        save_file({k: v.half().contiguous() for k, v in self.state_dict().items()}, os.path.join(folder, ROUTER_WEIGHTS))
        with open(os.path.join(folder, ROUTER_CONFIG), "w") as f:
            json.dump(self.config, f, indent=2)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ClusterRouter":
        from safetensors.torch import load_file

        config_path, weights_path = os.path.join(folder, ROUTER_CONFIG), os.path.join(folder, ROUTER_WEIGHTS)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing; train a router with `evospec-hf train-router`.")
        try:
            with open(config_path) as f:
                router = cls(**json.load(f))
            router.load_state_dict({k: v.float() for k, v in load_file(weights_path).items()})
        except Exception as err:
            raise ValueError(f"the router in {folder} is corrupt: {err}") from err
        return router.eval()


class RoutedHead:
    """LM-head logits over the clusters a router picks for each draft step.

    Read-only once built, so threads drafting at once can share it.

    Args:
        router: the trained `ClusterRouter`.
        clusters: the `TokenClusters` it was trained for.
        lm_head_weight: `(vocab_size, hidden_size)` drafter LM head; a cluster-contiguous copy is made once.
        lm_head_bias: optional `(vocab_size,)` bias.
        sorted_weight: the head's rows in the clusters' order, if already made (`load_routed_head` shares it).
    """

    def __init__(self, router, clusters: TokenClusters, lm_head_weight, lm_head_bias, sorted_weight=None):
        if clusters.vocab_size != lm_head_weight.shape[0]:
            raise ValueError(f"clusters cover {clusters.vocab_size} tokens, the LM head has {lm_head_weight.shape[0]}")
        if router.config["num_clusters"] != clusters.num_clusters:
            raise ValueError(f"router scores {router.config['num_clusters']} clusters, clusters has {clusters.num_clusters}")
        device = lm_head_weight.device
        self.router = router.to(device)
        self.clusters = clusters
        self.order = clusters.order.to(device)
        self.offsets = clusters.offsets.tolist()
        self.sizes = clusters.sizes().to(device)
        # the one full-size copy: rows in cluster order, so a cluster is a contiguous block (made once per drafter;
        # `sorted_weight` passes one made before for the same head and cluster order)
        self.sorted_weight = lm_head_weight.index_select(0, self.order) if sorted_weight is None else sorted_weight
        self.sorted_bias = None if lm_head_bias is None else lm_head_bias.index_select(0, self.order)

    @torch.no_grad()
    def ranked_clusters(self, hidden: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(T, hidden_size)` -> clusters best first `(T, C)`, and how many of them each position takes `(T,)`:
        clusters are added best first while their tokens fit in `budget`, at least one."""
        ranked = torch.argsort(self.router(hidden), dim=-1, descending=True)
        count = (torch.cumsum(self.sizes[ranked], -1) <= budget).sum(-1).clamp(min=1)
        return ranked, count

    def select(self, hidden: torch.Tensor, budget: int) -> list[int]:
        """Cluster ids for one position `(1, hidden_size)`, best first, within `budget` tokens."""
        ranked, count = self.ranked_clusters(hidden, budget)
        return ranked[0, : int(count[0])].tolist()

    def holds(self, hidden: torch.Tensor, token_ids: torch.Tensor, budget: int) -> torch.Tensor:
        """`(T, hidden_size)`, `(T,)` -> `(T,)` bool: whether the clusters picked at each position hold its token."""
        ranked, count = self.ranked_clusters(hidden, budget)
        wanted = self.clusters.cluster_of.to(ranked.device)[token_ids.to(ranked.device)]
        rank = (ranked == wanted[:, None]).float().argmax(-1)
        return rank < count

    def logits(self, hidden: torch.Tensor, clusters: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(1, hidden)` -> (token ids `(n,)`, float32 logits `(1, n)`) over the given clusters, reading rows in place."""
        pieces, ids = [], []
        for c in clusters:
            start, end = self.offsets[c], self.offsets[c + 1]
            bias = None if self.sorted_bias is None else self.sorted_bias[start:end]
            pieces.append(torch.nn.functional.linear(hidden, self.sorted_weight[start:end], bias))
            ids.append(self.order[start:end])
        return torch.cat(ids), torch.cat(pieces, dim=-1).float()


# per drafter LM-head module: the cluster-sorted copy of the head is the costly part (a full-size copy). The lock
# keeps two threads starting on one drafter from building it twice.
# per LM-head module: {key: RoutedHead}, most recently used last. Several drafters of one target share its head
# (a token and a feature drafter, say), and each has its own router, so one entry per head would rebuild at every
# switch. The routed heads of one head share their cluster-sorted copy of it when their cluster order is the same.
_ROUTED_CACHE: "weakref.WeakKeyDictionary[nn.Module, collections.OrderedDict]" = weakref.WeakKeyDictionary()
_ROUTED_LOCK = threading.Lock()
_ROUTED_PER_HEAD = 4


def resolve_router_folder(router_path, drafter) -> str:
    """`router_path`, else the drafter's own folder, if it holds a router."""
    if router_path:
        return os.fspath(router_path)
    folder = drafter_folder(drafter)
    if os.path.isfile(os.path.join(folder, ROUTER_CONFIG)):
        return folder
    raise FileNotFoundError(
        f"shortlist='router' needs a trained router, but `router_path` is not set and the drafter's folder "
        f"({folder or 'none: the drafter was not loaded from a folder'!r}) has no {ROUTER_CONFIG}. "
        "Train one with `evospec-hf train-router`."
    )


def load_routed_head(router_path, drafter, lm_head: nn.Module) -> RoutedHead:
    """The `RoutedHead` for a drafter, reused across `generate` calls while nothing it depends on changes."""
    folder = os.path.abspath(resolve_router_folder(router_path, drafter))
    stamps = tuple(
        os.stat(os.path.join(folder, name)).st_mtime_ns if os.path.exists(os.path.join(folder, name)) else None
        for name in (ROUTER_CONFIG, ROUTER_WEIGHTS, "evospec_clusters.safetensors")
    )
    bias = getattr(lm_head, "bias", None)
    key = (folder, stamps, lm_head.weight._version, None if bias is None else bias._version)
    with _ROUTED_LOCK:
        cached = _ROUTED_CACHE.setdefault(lm_head, collections.OrderedDict())
        if key in cached:
            cached.move_to_end(key)
            return cached[key]
        weight = lm_head.weight.detach()
        clusters = TokenClusters.load(folder, vocab_size=weight.shape[0])
        version = key[2:]  # the head's weights (and bias) as they are now
        same_rows = (
            r for k, r in cached.items() if k[2:] == version and torch.equal(r.order.cpu(), clusters.order.cpu())
        )
        shared = next((r.sorted_weight for r in same_rows), None)
        routed = RoutedHead(
            ClusterRouter.load(folder), clusters, weight, None if bias is None else bias.detach(), sorted_weight=shared
        )
        cached[key] = routed
        while len(cached) > _ROUTED_PER_HEAD:
            cached.popitem(last=False)
    return routed
