"""Loading one plugin loads no other model: a store that only holds text never imports CLIP or Whisper code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_text_store_imports_no_other_model(model_home, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        from aios_memory import MemoryStore
        from aios_memory.plugins import get_providers
        s = MemoryStore({str(tmp_path / "s")!r})
        s.add_many(["a text memory", "another one"])
        s.search("memory", k=1)
        s.sql("SELECT content FROM text_memories ORDER BY array_cosine_similarity(embedding, embed_text(?)) DESC",
              ["x"])
        heavy = sorted(m for m in sys.modules
                       if m.startswith(("aios_memory_clip.", "aios_memory_whisper.")) and not m.endswith(".provider"))
        print(json.dumps({{"heavy": heavy, "loaded": {{n: p.loaded for n, p in get_providers().items()}},
                          "transformers": "transformers" in sys.modules, "librosa": "librosa" in sys.modules}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []  # no model, preprocessing, tokenizer or decoder module of another plugin
    assert got["loaded"].pop("minilm-l6-v2") is True
    assert not any(got["loaded"].values())
    assert got["transformers"] is False and got["librosa"] is False
