"""Text–image engine calls on the store (CLIP-style): thin delegation to the image provider.

The store's image provider must embed text queries into its own space (``query_modalities`` holds
"text") and expose the engine methods; the bundled CLIP plugin does. Inputs go through the same
``prepare`` as stored memories, so paths, bytes, file objects and PIL images all work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aios_memory.errors import InvalidInputError, ProviderError
from aios_memory.modality import prepare

ENGINE_METHODS = ("encode_text", "encode_image", "compute_similarity", "zero_shot_classification")


class CrossModalMixin:
    """Mixed into ``MemoryStore``; relies on its ``provider_for`` and ``search``."""

    def _joint_provider(self) -> Any:
        provider = self.provider_for("image")  # type: ignore[attr-defined]
        missing = [m for m in ENGINE_METHODS if not callable(getattr(provider, m, None))]
        if "text" not in provider.query_modalities or missing:
            raise ProviderError(
                f"image provider {provider.name!r} has no joint text–image space "
                f"(missing: {', '.join(missing) or 'text queries'}); install the CLIP plugin's weights"
            )
        return provider

    @staticmethod
    def _images(images: Any) -> list[Any]:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise InvalidInputError("no images given")
        return [prepare(img, "image").payload for img in images]

    @staticmethod
    def _texts(texts: str | Sequence[str]) -> list[str]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InvalidInputError("no texts given")
        return [prepare(t, "text").payload for t in texts]

    def encode_image(self, images: Any) -> np.ndarray:
        """Image embeddings ``(n, dim)`` in the joint space."""
        return self._joint_provider().encode_image(self._images(images))

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Text embeddings ``(n, dim)`` in the joint text–image space (CLIP's text tower, not MiniLM)."""
        return self._joint_provider().encode_text(self._texts(texts))

    def compute_similarity(self, images: Any, texts: str | Sequence[str]) -> np.ndarray:
        """Logits ``(n_images, n_texts)``: cosine similarity scaled by the checkpoint's logit scale."""
        provider = self._joint_provider()
        return provider.compute_similarity(
            provider.encode_image(self._images(images)), provider.encode_text(self._texts(texts))
        )

    def find_best_matches(self, text: str, k: int = 5, **search_kwargs: Any) -> list[Any]:
        """Text → images: the stored image memories that best match ``text``."""
        self._joint_provider()
        return self.search(text, k=k, modality="image", **search_kwargs)  # type: ignore[attr-defined]

    def find_best_text_matches(self, image: Any, texts: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
        """Image → texts: the ``k`` of ``texts`` that best describe ``image``, with their logits."""
        texts = self._texts(texts)
        logits = self.compute_similarity(image, texts)[0]
        order = np.argsort(-logits, kind="stable")[:k]
        return [(texts[i], float(logits[i])) for i in order]

    def zero_shot_classification(
        self, image: Any, labels: Sequence[str], templates: Sequence[str] | None = None
    ) -> dict[str, float]:
        """Probabilities over ``labels`` for one image (prompt ``templates`` averaged per label)."""
        provider = self._joint_provider()
        payload = self._images(image)
        if len(payload) != 1:
            raise InvalidInputError("zero_shot_classification takes one image")
        kwargs = {"templates": tuple(templates)} if templates is not None else {}
        return provider.zero_shot_classification(payload[0], list(labels), **kwargs)
