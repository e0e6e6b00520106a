"""Colour-histogram image embeddings: 4×4×4 RGB bins, square-rooted (Hellinger), L2-normalised by the core.

A complete third-party provider in one file: it subclasses ``EmbeddingProvider``, implements ``_embed``,
and registers through the ``aios_memory`` entry-point group. No change to aios-memory is needed.
"""

from __future__ import annotations

import io

import numpy as np

from aios_memory import EmbeddingProvider, hookimpl

BINS = 4


class ColorHistogram(EmbeddingProvider):
    name = "colorhist-64"
    modality = "image"
    dim = BINS**3

    def _embed(self, items):
        from PIL import Image

        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for i, item in enumerate(items):
            img = item if hasattr(item, "convert") else Image.open(io.BytesIO(item))
            rgb = np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.int64) // (256 // BINS)
            idx = (rgb[..., 0] * BINS + rgb[..., 1]) * BINS + rgb[..., 2]
            out[i] = np.sqrt(np.bincount(idx.ravel(), minlength=self.dim))
        return out


@hookimpl
def register_embedding_providers(register):
    register(ColorHistogram())
