"""LangChain's own standard suite (``langchain-tests``' ``VectorStoreIntegrationTests``, sync and async) on
``AiosMemoryVectorStore`` with the suite's own embeddings (``DeterministicFakeEmbedding``, 6-d), as every
LangChain partner package runs it: the adapter wraps them as a foreign provider (``aios_memory.foreign``).

Each test gets a fresh store in its own ``tmp_path``. No opt-outs: ``has_sync``, ``has_async`` and
``has_get_by_ids`` keep the suite's defaults (True). The suite's async tests carry no marker (partner
packages run pytest-asyncio in auto mode); this project keeps pytest-asyncio's strict mode, so the subclass
carries the ``asyncio`` mark (the suite refuses overridden tests, so they cannot be marked one by one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # the test extra installs it

from aios_memory.foreign import (
    ForeignEmbeddingProvider,
    registered_foreign,
    unregister_foreign,
)
from aios_memory.integrations.langchain import AiosMemoryVectorStore


@pytest.fixture(autouse=True, scope="module")
def _forget_foreign() -> Iterator[None]:
    """The suite's model is registered while this module runs, not for the modules after it."""
    yield
    for name in registered_foreign():
        unregister_foreign(name)


class TestAiosMemoryStandard(VectorStoreIntegrationTests):
    # runs the async tests; on the sync ones pytest-asyncio does nothing but warn that the mark is unused
    pytestmark = [
        pytest.mark.asyncio,
        pytest.mark.filterwarnings("ignore:The test <Function .* but it is not an async function"),
    ]

    @pytest.fixture()
    def vectorstore(self, tmp_path: Path) -> VectorStore:  # type: ignore[override]
        vs = AiosMemoryVectorStore(tmp_path / "store", namespace="standard", embedding=self.get_embeddings())
        provider = vs.store.provider_for("text")
        assert isinstance(provider, ForeignEmbeddingProvider)  # the suite's model, not MiniLM
        assert provider.dim == 6
        return vs
