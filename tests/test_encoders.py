"""The real default backbones, loaded from their PyPI packages (nothing is downloaded)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import draw_product
from vitrine.config import EncoderConfig
from vitrine.encoders import ImageEncoder, l2_normalize, load_image_encoder, load_text_encoder
from vitrine.encoders.image_data import Preprocess
from vitrine.errors import ImageError, VitrineError


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder("minilm")


@pytest.fixture(scope="module")
def image_encoder():
    return load_image_encoder("efficientnet-lite0", EncoderConfig(num_workers=2))


def test_minilm_gives_unit_vectors_that_mean_something(text_encoder):
    vectors = text_encoder.encode(["fresh red apple", "a crisp apple fruit", "synthetic motor oil 5W-30"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert text_encoder.encode([]).shape == (0, 384)


def test_efficientnet_features(tmp_path: Path, image_encoder):
    red = draw_product(tmp_path / "red.png", "circle", (220, 20, 20))
    red_again = draw_product(tmp_path / "red2.jpg", "circle", (215, 25, 25), size=200)
    blue = draw_product(tmp_path / "blue.png", "stripes", (20, 40, 220))
    vectors = image_encoder.encode([red, red_again, blue])
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_paths_bytes_and_pil_images_agree(tmp_path: Path, image_encoder):
    path = draw_product(tmp_path / "x.png", "square", (10, 200, 90))
    from_path, from_bytes, from_pil = image_encoder.encode([path, path.read_bytes(), Image.open(path)])
    assert np.allclose(from_path, from_bytes, atol=1e-6) and np.allclose(from_path, from_pil, atol=1e-6)


def test_worker_processes_give_the_same_vectors(tmp_path: Path, image_encoder):
    paths = [draw_product(tmp_path / f"{i}.png", "circle", (i * 30 % 255, 90, 200 - i * 10)) for i in range(9)]
    in_process = image_encoder.encode(paths, batch_size=8)
    with_workers = image_encoder.encode(paths, batch_size=4)  # 9 > 2 * 4: DataLoader workers decode
    assert np.allclose(in_process, with_workers, atol=1e-5)


def test_broken_image_is_named(tmp_path: Path, image_encoder):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageError, match="broken.jpg: not a readable image"):
        image_encoder.encode([broken])
    with pytest.raises(ImageError, match="image not found"):
        image_encoder.encode([tmp_path / "missing.png"])


def test_preprocess_crops_the_centre_square():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (100, 0, 200, 100))  # a white centre third
    pixels = Preprocess(size=32)(image)
    assert pixels.shape == (3, 32, 32)
    assert float(pixels.min()) > 0.5  # black would be -0.99; only the white centre (1.0) survives


def test_unknown_encoder_names():
    with pytest.raises(VitrineError, match="unknown text encoder 'bert-huge'"):
        load_text_encoder("bert-huge")
    with pytest.raises(VitrineError, match="unknown image encoder"):
        load_image_encoder("resnet-9000")
    with pytest.raises(VitrineError, match="text model folder not found"):
        load_text_encoder("sentence-transformers:/nowhere/model")


def test_split_backbone_top_reproduces_the_full_network(tmp_path: Path, image_encoder):
    import torch

    from vitrine.encoders import load_image_top

    photo = draw_product(tmp_path / "a.png", "circle", (200, 40, 40))
    bottom = load_image_encoder("efficientnet-lite0/top2")
    assert not bottom.normalized and bottom.map_shape == (192, 7, 7) and bottom.dim == 192 * 49
    maps = bottom.encode([photo])
    top = load_image_top("efficientnet-lite0/top2").eval()
    pooled = top(torch.from_numpy(maps)).detach().numpy()
    assert np.allclose(l2_normalize(pooled), image_encoder.encode([photo]), atol=1e-4)
    top.train()
    assert not any(m.training for m in top.modules() if isinstance(m, torch.nn.BatchNorm2d))  # ImageNet stats kept
    torch.manual_seed(0)
    augmented = top(torch.from_numpy(np.repeat(maps, 4, axis=0))).detach().numpy()
    assert not np.allclose(augmented[0], pooled[0], atol=1e-3)  # flips and crops change the view


@pytest.mark.parametrize("variant, blocks, size", [("efficientnet-lite1", 21, 240), ("efficientnet-lite2", 21, 260)])
def test_larger_lite_variants_load_their_own_imagenet_weights(tmp_path: Path, image_encoder, variant, blocks, size):
    import torch

    from vitrine.encoders import load_image_top

    photo = draw_product(tmp_path / "a.png", "circle", (200, 40, 40))
    encoder = load_image_encoder(variant)
    assert len(encoder.model._blocks) == blocks and encoder.preprocess.size == size  # native resolution by default
    running_var = encoder.model._bn0.running_var
    assert not torch.allclose(running_var, torch.ones_like(running_var))  # trained statistics, not a fresh init
    full = encoder.encode([photo])
    assert full.shape == (1, 1280) and abs(float(full[0] @ image_encoder.encode([photo])[0])) < 0.99
    maps = load_image_encoder(f"{variant}@{size}/top3").encode([photo])
    pooled = load_image_top(f"{variant}@{size}/top3").eval()(torch.from_numpy(maps)).detach().numpy()
    assert np.allclose(l2_normalize(pooled), full, atol=1e-4)


def test_split_text_model_top_reproduces_the_sentence_embedding(text_encoder):
    import torch

    from vitrine.encoders import load_text_top

    texts = ["fresh red apple", "Double Tape 3M VHB 12 mm x 4,5 m ORIGINAL / DOUBLE FOAM TAPE", "a"]
    bottom = load_text_encoder("minilm/top2")
    assert bottom.name == "minilm/top2" and not bottom.normalized and bottom.dim == 48 * 385
    states = bottom.encode(texts)
    assert states.shape == (3, 48 * 385)
    mask = states.reshape(3, 48, 385)[..., -1]
    assert mask.sum(axis=1).tolist()[2] == 3  # [CLS] a [SEP], the rest is padding
    top = load_text_top("minilm/top2").eval()
    with torch.no_grad():
        vectors = top(torch.from_numpy(states)).numpy()
    assert np.allclose(vectors, text_encoder.encode(texts), atol=1e-5)
    with torch.no_grad():  # a batch's padding beyond its longest text is cut off without changing anything
        assert np.allclose(top(torch.from_numpy(states[2:])).numpy(), vectors[2:], atol=1e-5)
    assert sum(p.numel() for p in top.parameters()) > 2 * 1_000_000  # two real transformer layers


def test_split_text_bottom_in_onnx_runtime_matches_pytorch_whatever_the_batch():
    texts = ["fresh red apple", "Double Tape 3M VHB 12 mm x 4,5 m ORIGINAL / DOUBLE FOAM TAPE", "a"]
    onnx = load_text_encoder("minilm/top1", EncoderConfig(runtime="onnx"))
    eager = load_text_encoder("minilm/top1", EncoderConfig(runtime="torch"))
    assert onnx.onnx is not None and eager.onnx is None
    together = onnx.encode(texts).reshape(3, 48, 385)
    assert np.allclose(together, eager.encode(texts).reshape(3, 48, 385), atol=1e-4)
    alone = np.concatenate([onnx.encode([text]) for text in texts]).reshape(3, 48, 385)
    assert np.allclose(alone, together, atol=1e-4)  # padded to the batch's longest text: same states either way
    length = int(together[2, :, -1].sum())
    assert length == 3 and not together[2, length:].any()  # past a text's end: zero states, mask 0


def test_a_served_text_top_matches_pytorch_at_any_length_and_batch(monkeypatch):
    import torch

    from vitrine.encoders import load_text_top, onnx_runtime
    from vitrine.encoders.sentence_transformer import ServedTransformerTop

    texts = ["fresh red apple", "Double Tape 3M VHB 12 mm x 4,5 m ORIGINAL / DOUBLE FOAM TAPE", "a", "oat milk"]
    states = torch.from_numpy(load_text_encoder("minilm/top1").encode(texts))
    top = load_text_top("minilm/top1").eval()
    served = ServedTransformerTop(top, "test-text-top")
    with torch.no_grad():
        expected = top(states).numpy()
    assert np.allclose(served(states).numpy(), expected, atol=1e-5)
    assert served.served._runner not in (None, False)  # exported with two texts of three tokens, run on others
    for rows in ([2], [0, 3], [1, 2, 3]):  # other batch sizes and longest lengths than the export's
        assert np.allclose(served(states[rows]).numpy(), expected[rows], atol=1e-5)
    monkeypatch.setattr(onnx_runtime, "try_onnx", lambda *args, **kwargs: None)  # the exporter fails
    fallback = ServedTransformerTop(top, "test-text-top-fallback")
    assert np.allclose(fallback(states).numpy(), expected, atol=1e-6) and fallback.served._runner is None


def test_split_text_encoder_names():
    from vitrine.encoders import load_text_top, parse_text_encoder, with_top_blocks

    assert parse_text_encoder("minilm/top1") == ("minilm", 1)
    assert parse_text_encoder("sentence-transformers:/m/topology") == ("sentence-transformers:/m/topology", 0)
    assert parse_text_encoder("sentence-transformers:/m/topology/top3") == ("sentence-transformers:/m/topology", 3)
    assert with_top_blocks("minilm", 2) == "minilm/top2" and with_top_blocks("minilm/top2", 0) == "minilm"
    with pytest.raises(VitrineError, match="between 1 and 6, got 7"):
        load_text_encoder("minilm/top7")
    with pytest.raises(VitrineError, match="has no trainable top"):
        load_text_top("minilm")
    with pytest.raises(VitrineError, match="unknown text encoder 'minilm/topX'"):
        parse_text_encoder("minilm/topX")


def test_split_encoder_names():
    from vitrine.encoders import parse_image_encoder, with_top_blocks

    assert parse_image_encoder("efficientnet-lite0@288/top2") == ("efficientnet-lite0", 288, 2)
    assert with_top_blocks("efficientnet-lite0@288", 1) == "efficientnet-lite0@288/top1"
    assert with_top_blocks("efficientnet-lite0@288/top1", 0) == "efficientnet-lite0@288"
    with pytest.raises(VitrineError, match="unknown image encoder"):
        parse_image_encoder("efficientnet-lite0/topX")
    with pytest.raises(VitrineError, match="top_blocks must be between 0 and 16"):
        load_image_encoder("efficientnet-lite0/top17")


def test_onnx_runtime_matches_pytorch_on_texts_of_every_length(text_encoder):
    from vitrine.encoders.sentence_transformer import SentenceTransformerEncoder, minilm_path

    eager = SentenceTransformerEncoder(minilm_path(), runtime="torch")
    texts = ["a", "oat milk", "vanilla soy yoghurt " * 200, "fresh red apple from the farm"]  # one past 256 tokens
    assert text_encoder.onnx is not None  # the default runtime exported the model
    assert np.allclose(text_encoder.encode(texts, batch_size=3), eager.encode(texts), atol=1e-5)


def test_onnx_runtime_matches_pytorch_on_photos(tmp_path: Path, image_encoder):
    eager = load_image_encoder("efficientnet-lite0", EncoderConfig(runtime="torch"))
    paths = [draw_product(tmp_path / f"{i}.png", shape, colour)
             for i, (shape, colour) in enumerate([("circle", (220, 20, 20)), ("stripes", (20, 40, 220))])]
    assert image_encoder.onnx is not None and eager.onnx is None
    assert np.allclose(image_encoder.encode(paths), eager.encode(paths), atol=1e-4)


def test_maps_below_a_fine_tuned_top_come_from_onnx_runtime_and_match_pytorch(tmp_path: Path):
    """A served stage-3 model runs the frozen blocks below its fine-tuned top on every photo query."""
    onnx = load_image_encoder("efficientnet-lite0/top2")
    eager = load_image_encoder("efficientnet-lite0/top2", EncoderConfig(runtime="torch"))
    paths = [draw_product(tmp_path / f"{i}.png", shape, colour)
             for i, (shape, colour) in enumerate([("circle", (220, 20, 20)), ("stripes", (20, 40, 220))])]
    assert onnx.onnx is not None and eager.onnx is None
    maps = onnx.encode(paths)
    assert maps.shape == (2, onnx.dim) and onnx.dim == int(np.prod(onnx.map_shape))
    assert np.allclose(maps, eager.encode(paths), atol=1e-3, rtol=1e-3)
    assert not np.allclose(maps[0], maps[1])  # two different photos: the maps carry the picture


def test_a_fine_tuned_top_served_by_onnx_runtime_matches_pytorch_at_any_batch(tmp_path: Path, monkeypatch):
    import torch

    from vitrine.encoders.onnx_runtime import ServedModule

    monkeypatch.setenv("VITRINE_CACHE_DIR", str(tmp_path))
    encoder = load_image_encoder("efficientnet-lite0/top1")
    top = encoder.top().eval()
    torch.nn.init.normal_(top.conv_head.weight, std=0.05)  # weights of its own, as after training
    served = ServedModule(top, "maps", "image-top")
    maps = torch.randn(3, encoder.dim)
    with torch.no_grad():
        expected = top(maps)
    assert torch.allclose(served(maps), expected, atol=1e-4)  # exported on this call, from a batch of 2
    assert served._runner is not None and len(list(tmp_path.glob("onnx/image-top-*.onnx"))) == 1
    assert torch.allclose(served(maps[:1]), expected[:1], atol=1e-4)

    class Unexportable(torch.nn.Module):
        def forward(self, inputs):
            if torch.jit.is_tracing():  # stands in for any operator the exporter cannot handle
                raise RuntimeError("no ONNX for this")
            return inputs * 2

    fallback = ServedModule(Unexportable(), "x", "unexportable")
    assert torch.equal(fallback(torch.ones(2, 3)), 2 * torch.ones(2, 3)) and fallback._runner is None


def test_exported_graphs_are_reused_and_follow_the_weights(tmp_path: Path, monkeypatch):
    import torch

    from vitrine.encoders import onnx_runtime

    monkeypatch.setenv("VITRINE_CACHE_DIR", str(tmp_path))
    exports = []
    real_export = onnx_runtime.export
    monkeypatch.setattr(onnx_runtime, "export", lambda *args: exports.append(args[-1]) or real_export(*args))
    layer = torch.nn.Linear(4, 3)
    example = {"x": torch.zeros(2, 4)}
    first = onnx_runtime.OnnxModel(layer, example, onnx_runtime.batch_dynamic(example), "tiny")
    again = onnx_runtime.OnnxModel(layer, example, onnx_runtime.batch_dynamic(example), "tiny")
    assert len(exports) == 1 and again.path == first.path
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert np.allclose(again(x=x), layer(torch.from_numpy(x)).detach().numpy(), atol=1e-6)
    with torch.no_grad():
        layer.weight.add_(1.0)
    changed = onnx_runtime.OnnxModel(layer, example, onnx_runtime.batch_dynamic(example), "tiny")
    assert len(exports) == 2 and changed.path != first.path
    assert np.allclose(changed(x=x), layer(torch.from_numpy(x)).detach().numpy(), atol=1e-6)


def test_a_backbone_that_cannot_be_exported_falls_back_to_pytorch(monkeypatch, caplog):
    import torch

    from vitrine.encoders import onnx_runtime

    def refuse(*args):
        raise RuntimeError("operator not supported\nlong exporter trace")

    monkeypatch.setattr(onnx_runtime, "export", refuse)
    example = {"x": torch.zeros(1, 2)}
    with caplog.at_level("WARNING"):
        assert onnx_runtime.try_onnx(torch.nn.Linear(2, 2), example, {}, "odd-backbone") is None
    assert "odd-backbone: ONNX Runtime unavailable (operator not supported)" in caplog.text


def test_unknown_runtime_is_refused():
    with pytest.raises(VitrineError, match="unknown encoder runtime 'tensorrt'"):
        load_image_encoder("efficientnet-lite0", EncoderConfig(runtime="tensorrt"))


def test_last_call_memo_runs_the_encoder_once_per_input_objects():
    from vitrine.encoders.shared import LastCallMemo

    class Counting(ImageEncoder):
        name, dim, calls = "counting", 2, 0

        def encode(self, images, *, batch_size=32, progress=False):
            self.calls += 1
            return np.array([[len(image), self.calls] for image in images], dtype=np.float32)

    inner = Counting()
    memo = LastCallMemo(inner, max_items=2)
    photo = b"jpeg bytes"
    first = memo.encode([photo])
    first[0, 0] = -1.0  # a caller writing into its result must not change what the memo returns next
    assert memo.encode([photo]).tolist() == [[10.0, 1.0]] and inner.calls == 1  # same object: not run again
    assert memo.encode([bytes(bytearray(photo))]).tolist() == [[10.0, 2.0]]  # an equal copy is another photo
    assert memo.encode([b"other photo", photo])[:, 1].tolist() == [3.0, 3.0]
    big = [b"a", b"b", b"c"]
    memo.encode(big)
    memo.encode(big)  # calls above max_items (catalog work) are not kept
    assert inner.calls == 5 and memo.name == "counting" and memo.dim == 2


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_stacked_encoder_gives_the_full_networks_features(tmp_path: Path, runtime):
    from vitrine.encoders import load_image_top
    from vitrine.encoders.shared import StackedEncoder

    photos = [draw_product(tmp_path / f"{i}.png", shape, colour)
              for i, (shape, colour) in enumerate([("circle", (200, 40, 40)), ("stripes", (30, 60, 210))])]
    config = EncoderConfig(runtime=runtime)
    stacked = StackedEncoder(load_image_encoder("efficientnet-lite0@96/top2", config),
                             load_image_top("efficientnet-lite0@96/top2"), "efficientnet-lite0@96", runtime=runtime)
    full = load_image_encoder("efficientnet-lite0@96", config).encode(photos)
    assert stacked.dim == 1280 and np.allclose(stacked.encode(photos, batch_size=1), full, atol=1e-4)
    assert stacked.encode([]).shape == (0, 1280)
