"""Teacher labels as the teacher gives them best: overlapping tiles, and the ×8 self-ensemble.

A Restormer's attention spans its whole input, and it learned on crops of 128–256 pixels;
run on a whole 2K photo it needs gigabytes and meets statistics it never saw in training.
``TeacherLabels`` runs it on tiles of a training size that overlap, in batches, and blends
the overlaps so that no seam shows: in each overlap a tile's weight is zero for the
quarter nearest its edge (where it lacks context) and rises linearly after that. A network
whose receptive radius fits in that quarter gives exactly its whole-image output.

With ``ensemble`` each tile is also labelled under the eight flips and rotations of the
square (the dihedral group D4) and the eight outputs, turned back, are averaged: the ×8
self-ensemble of EDSR and of Restormer's own tests. It costs eight runs per tile.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

# (quarter turns, mirrored first): the eight symmetries of the square.
DIHEDRAL = tuple((turns, mirrored) for mirrored in (False, True) for turns in range(4))


def transform(x: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    if mirrored:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1))


def untransform(y: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    y = torch.rot90(y, -turns, dims=(-2, -1))
    return y.flip(-1) if mirrored else y


def self_ensemble(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The mean of the network's outputs over the eight flips and rotations of ``x``."""
    total = None
    for turns, mirrored in DIHEDRAL:
        y = untransform(network(transform(x, turns, mirrored)), turns, mirrored).float()
        total = y if total is None else total + y
    return total / len(DIHEDRAL)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of ``tile`` start along one side: neighbours overlap by at least
    ``overlap``, the last one ends at the border."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def edge_weights(size: int, overlap: int, before: bool, after: bool) -> torch.Tensor:
    """A tile's blending weight along one side; ``before``/``after``: a neighbour overlaps
    there. Zero over the quarter of the overlap at that edge, then a linear rise to one."""
    weights = torch.ones(size)
    blind = overlap // 4
    ramp = torch.arange(1, overlap - blind + 1, dtype=torch.float32) / (overlap - blind)
    if before:
        weights[:blind] = 0
        weights[blind:overlap] = ramp
    if after:
        weights[size - blind:] = 0
        weights[size - overlap:size - blind] = torch.minimum(weights[size - overlap:size - blind], ramp.flip(0))
    return weights


class TeacherLabels(nn.Module):
    """Wraps a teacher network: ``labels(images)`` is its output on N×C×H×W images,
    computed tile by tile (``tile`` pixels, neighbours overlapping by ``overlap``, by
    default an eighth of a tile) and, with ``ensemble``, averaged over the eight flips and
    rotations. Images no larger than a tile run whole. No gradients: labels are targets."""

    def __init__(self, teacher: nn.Module, *, tile: int = 256, overlap: Optional[int] = None,
                 ensemble: bool = False, batch_size: int = 4):
        super().__init__()
        if overlap is None:
            overlap = max(4, tile // 8)
        if tile <= 0 or not 4 <= overlap < tile:
            raise ValueError(f"need a positive tile and 4 <= overlap < tile; got tile {tile}, overlap {overlap}")
        self.teacher = teacher
        self.tile, self.overlap, self.ensemble, self.batch_size = tile, overlap, ensemble, batch_size

    def describe(self) -> str:
        return (f"tiles of {self.tile} overlapping by {self.overlap}"
                + (", ×8 self-ensemble" if self.ensemble else ""))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self_ensemble(self.teacher, x) if self.ensemble else self.teacher(x).float()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        if height <= self.tile and width <= self.tile:
            return torch.cat([self._run(images[i:i + self.batch_size])
                              for i in range(0, n, self.batch_size)])
        tile_h, tile_w = min(self.tile, height), min(self.tile, width)
        rows, cols = tile_starts(height, tile_h, self.overlap), tile_starts(width, tile_w, self.overlap)
        places = [(k, y, x) for k in range(n) for y in rows for x in cols]
        out = weight_sum = None
        for first in range(0, len(places), self.batch_size):
            chunk = places[first:first + self.batch_size]
            labels = self._run(torch.stack([images[k, :, y:y + tile_h, x:x + tile_w] for k, y, x in chunk]))
            if out is None:
                out = images.new_zeros((n, labels.shape[1], height, width), dtype=torch.float32)
                weight_sum = images.new_zeros((n, 1, height, width), dtype=torch.float32)
            for label, (k, y, x) in zip(labels, chunk):
                weight = (edge_weights(tile_h, self.overlap, y > 0, y + tile_h < height)[:, None]
                          * edge_weights(tile_w, self.overlap, x > 0, x + tile_w < width)[None, :]
                          ).to(out.device)
                out[k, :, y:y + tile_h, x:x + tile_w] += label * weight
                weight_sum[k, :, y:y + tile_h, x:x + tile_w] += weight
        return out / weight_sum
