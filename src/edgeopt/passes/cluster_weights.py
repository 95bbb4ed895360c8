"""Weight clustering (weight sharing): k-means per layer to N centroids, optionally fine-tuned with
the clusters kept (Deep Compression's shared-centroid training), with codebook storage accounting.

Zeros left by an earlier pruning pass stay zero (only non-zeros are clustered) so that
prune -> cluster -> encode compounds. With ``codebook="int8"`` the centroids themselves are rounded
to a symmetric int8 grid per layer (one fp32 scale), so every weight is an int8 value times a scale.
The exported ONNX model stores dense fp32 tensors with at most N distinct values per layer; the
stored size in codebook + index (+ Huffman) form is reported from :mod:`edgeopt.storage`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import ConfigError
from ..training import Callbacks, fine_tune_config, recover
from .base import Choice, IntRange, Pass, PassContext, PassResult

CODEBOOKS = ("float32", "int8")


def kmeans_codebook(values: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, assignment) of 1-D ``values`` by k-means with linear initialisation (Han et al.: best for
    keeping the rare large weights), using scikit-learn."""
    from sklearn.cluster import KMeans

    distinct = np.unique(values)
    k = min(clusters, distinct.size)
    if k == distinct.size:
        return distinct.astype(np.float32), np.searchsorted(distinct, values)
    init = np.linspace(values.min(), values.max(), k).reshape(-1, 1)
    km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=100, random_state=seed).fit(values.reshape(-1, 1))
    return km.cluster_centers_.reshape(-1).astype(np.float32), km.labels_


def int8_grid(centroids: np.ndarray) -> np.ndarray:
    """Centroids rounded to a symmetric int8 grid (scale = max|c| / 127)."""
    scale = float(np.max(np.abs(centroids))) / 127 or 1.0
    return (np.clip(np.round(centroids / scale), -127, 127) * scale).astype(np.float32)


class ClusterWeights(Pass):
    """k-means every Conv/Linear weight tensor to at most ``clusters`` values (zeros kept)."""

    name: ClassVar[str] = "cluster.weights"
    stage: ClassVar[str] = "torch"
    requires: ClassVar[frozenset[str]] = frozenset({"torch"})
    description: ClassVar[str] = "per-layer k-means weight sharing + codebook/Huffman storage accounting"

    def __init__(self, *, clusters: int = 16, epochs: int = 0, lr: float = 1e-4, codebook: str = "float32"):
        self.clusters = clusters
        self.epochs = epochs
        self.lr = lr
        self.codebook = codebook

    @classmethod
    def search_space(cls):
        return {"clusters": IntRange(4, 256, log=True), "epochs": IntRange(0, 5), "codebook": Choice(CODEBOOKS)}

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.clusters, int) or not 2 <= self.clusters <= 256:
            raise ConfigError(f"{self.name}: parameter 'clusters' must be an int in [2, 256]; got {self.clusters!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"{self.name}: parameter 'epochs' must be an int >= 0; got {self.epochs!r}")
        fine_tune_config(self.epochs, self.lr).validate()

    def run(self, model, ctx: PassContext) -> PassResult:
        import torch

        from ..storage import model_storage
        from ..torch_twin import export, to_torch
        from .prune_magnitude import prunable_weights

        module = to_torch(model)
        weights = prunable_weights(module)
        assignments: dict[str, tuple] = {}
        for name, w in weights.items():
            flat = w.detach().reshape(-1).numpy()
            nonzero = flat != 0
            # One cluster is reserved for the exact zero when the layer is sparse.
            k = self.clusters - 1 if not nonzero.all() else self.clusters
            if nonzero.any():
                centroids, labels = kmeans_codebook(flat[nonzero], max(1, k), ctx.seed)
            else:
                # a layer pruned to all zeros (e.g. by prune.magnitude before) has nothing to cluster:
                # no members, so its gradient is shared to zero and it stays exactly zero
                centroids, labels = np.zeros(1, dtype=np.float32), np.zeros(0, dtype=np.int64)
            index = torch.full((flat.size,), -1, dtype=torch.long)
            index[torch.from_numpy(np.flatnonzero(nonzero))] = torch.from_numpy(labels.astype(np.int64))
            assignments[name] = (index, len(centroids))
            self._snap(w, index, torch.from_numpy(centroids))

        def share_gradients(_module) -> None:
            # Members of a cluster get their mean gradient (Han et al.: centroid update = sum of member
            # gradients), so AdamW moves them identically and the clusters survive fine-tuning.
            for name, w in weights.items():
                if w.grad is None:
                    continue
                index, k = assignments[name]
                grad = w.grad.reshape(-1)
                members = index >= 0
                sums = torch.zeros(k).index_add_(0, index[members], grad[members])
                counts = torch.zeros(k).index_add_(0, index[members], torch.ones(int(members.sum())))
                shared = torch.zeros_like(grad)
                shared[members] = (sums / counts.clamp_min(1))[index[members]]
                w.grad.copy_(shared.reshape(w.grad.shape))

        report = recover(module, model, ctx, fine_tune_config(self.epochs, self.lr, weight_decay=0.0,
                                                              **ctx.options.get("fine_tune", {})),
                         callbacks=Callbacks(after_backward=share_gradients))
        for name, w in weights.items():  # exact centroids after training (and the int8 grid if asked)
            index, k = assignments[name]
            flat = w.detach().reshape(-1)
            members = index >= 0
            sums = torch.zeros(k).index_add_(0, index[members], flat[members])
            counts = torch.zeros(k).index_add_(0, index[members], torch.ones(int(members.sum())))
            centroids = (sums / counts.clamp_min(1)).numpy()
            if self.codebook == "int8":
                centroids = int8_grid(centroids)
            self._snap(w, index, torch.from_numpy(centroids))
        new = export(module, model, self.record(), seed=ctx.seed)
        value_bits = 8 if self.codebook == "int8" else 32
        storage = model_storage({n: w.detach().numpy() for n, w in weights.items()}, codebook_value_bits=value_bits)
        return PassResult(new, {
            "distinct_values": {n: int(np.unique(w.detach().numpy()).size) for n, w in weights.items()},
            "dense_bytes": storage["total"]["dense_fp32"], "codebook_bytes": storage["total"]["codebook"],
            "huffman_bytes": storage["total"]["huffman"], "storage": storage["layers"],
            "fine_tune": report.to_dict(),
        })

    @staticmethod
    def _snap(weight, index, centroids) -> None:
        import torch

        with torch.no_grad():
            flat = torch.zeros(index.numel())
            members = index >= 0
            flat[members] = centroids[index[members]]
            weight.copy_(flat.reshape(weight.shape))
