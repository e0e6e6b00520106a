"""BERT converter: real folder in, checked weight file out; bad folders refused with a clear message."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from aios_memory_converters.bert import bert_shapes, convert_bert

from aios_memory.errors import WeightFileError
from aios_memory.weights import read_weights

TINY = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=512,
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_source):
    """A seeded random BERT saved by transformers as pytorch_model.bin, with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    model = BertModel(BertConfig(**TINY)).eval()
    model.save_pretrained(folder)
    # the legacy checkpoint format: a torch.save'd state dict, read back with weights_only=True
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    shutil.copy(minilm_source / "tokenizer.json", folder / "tokenizer.json")
    return folder, model


def test_convert_real_minilm_folder(minilm_source, tmp_path):
    out = convert_bert(minilm_source, tmp_path / "m")
    wf = read_weights(out, model="all-MiniLM-L6-v2")
    cfg = json.loads((minilm_source / "config.json").read_text())
    assert {k: t.shape for k, t in wf.tensors.items()} == bert_shapes(cfg)
    assert wf.source["format"] == "safetensors" and len(wf.source["sha256"]) == 64
    assert wf.config["max_seq_length"] == 256
    from safetensors.numpy import load_file

    ref = load_file(str(minilm_source / "model.safetensors"))
    for name, t in wf.tensors.items():
        assert np.array_equal(t.numpy(), ref[name]), name  # bit-exact copy, no transposes


def test_pytorch_bin_checkpoint_and_native_model_match_transformers(tiny_bert, tmp_path):
    folder, ref_model = tiny_bert
    out = convert_bert(folder, tmp_path / "tiny", model="tiny-bert")
    wf = read_weights(out)
    assert wf.source["format"] == "pytorch"
    from aios_memory_text.model import BertConfig, MiniLM

    native = MiniLM(BertConfig.from_dict(wf.config))
    native.load_state_dict(wf.torch_state_dict(), strict=True)
    native.eval()
    torch.manual_seed(1)
    ids = torch.randint(1000, 30000, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    with torch.no_grad():
        h = ref_model(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask.unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=1)
        ours = native(ids, mask)
    cos = torch.nn.functional.cosine_similarity(ours, ref).min().item()
    print(
        f"\ntiny BERT native vs transformers: min cosine {cos:.8f}, max abs {float((ours - ref).abs().max()):.2e}"
    )
    assert cos >= 0.99999 and float((ours - ref).abs().max()) <= 1e-5


def test_bad_folders(tiny_bert, tmp_path):
    folder, _ = tiny_bert
    with pytest.raises(WeightFileError, match="no config.json"):
        convert_bert(tmp_path, tmp_path / "out")
    other = tmp_path / "gpt"
    shutil.copytree(folder, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(WeightFileError, match="expected 'bert'"):
        convert_bert(other, tmp_path / "out")
    wrong = tmp_path / "wrong"
    shutil.copytree(folder, wrong)
    (wrong / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48}))
    with pytest.raises(WeightFileError, match="has shape"):
        convert_bert(wrong, tmp_path / "out")
    fewer = tmp_path / "fewer"
    shutil.copytree(folder, fewer)
    (fewer / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(WeightFileError, match="missing"):
        convert_bert(fewer, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(cfg))
    (empty / "tokenizer.json").write_text("{}")
    with pytest.raises(WeightFileError, match="neither model.safetensors nor pytorch_model.bin"):
        convert_bert(empty, tmp_path / "out")
    assert not (tmp_path / "out" / "weights.parquet").exists()
