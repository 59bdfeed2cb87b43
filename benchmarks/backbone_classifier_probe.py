"""A probe outside vitrine's pipeline (issue 4): a plain classifier on an image backbone's top blocks.

    python benchmarks/backbone_classifier_probe.py [--data ../shared/data] [--backbone efficientnet-lite0]
        [--epochs 8] [--size 224] [--unfreeze 5] [--seed 0] [--save scores.npy]

Grocery's 81 fine classes, every class trained (the seen-products protocol): the backbone's pooled 1280-d
features (blocks below the top ``--unfreeze`` frozen, BatchNorm statistics frozen) against a cosine head
whose rows start at the class means, an additive angular margin of 0.2 at scale 20, AdamW (1e-4 for the
blocks, 1e-3 for the head) with a cosine schedule, batches of 32, training photos resized to 1.15 x size and
centre-cropped to size, random mirror flips; val photos resized to size. No tower, no product side, no
contrastive term: what ID recognition reaches from the backbone alone, to compare with the staged
prototype recipe (``prototype_embeddings.py``). Prints val accuracy (= photo -> product R@1, one product per
class) after every epoch; ``--save`` writes the final val cosines (val photos x classes, class-id order).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def photos(root: Path, listing: str, short: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 pixels (N x 3 x short x short: vitrine's resize and centre square, unnormalised, kept as bytes so
    the training photos fit in memory at 1.15x) and fine class ids."""
    from vitrine.encoders.image_data import Preprocess

    square = Preprocess(size=short, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pixels, labels = [], []
    for line in (root / listing).read_text().splitlines():
        path, fine, _ = (part.strip() for part in line.split(","))
        pixels.append(square(Image.open(root / path).convert("RGB")).to(torch.uint8))
        labels.append(int(fine))
    return torch.stack(pixels), torch.tensor(labels)


def main() -> None:
    from vitrine.config import data_dir
    from vitrine.encoders.efficientnet import load_efficientnet_lite

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder with the datasets (default: $VITRINE_DATA)")
    parser.add_argument("--backbone", default="efficientnet-lite0", help="efficientnet-lite0, -lite1 or -lite2")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--unfreeze", type=int, default=5, help="top blocks trained (the rest frozen)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="write the final val cosines here (.npy)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(2)
    root = (args.data or data_dir()) / "grocery-store" / "dataset"
    size, big = args.size, int(args.size * 1.15)
    start = time.perf_counter()
    train_pixels, train_labels = photos(root, "train.txt", big)
    val_pixels, val_labels = photos(root, "val.txt", size)
    classes = int(train_labels.max()) + 1
    print(f"loaded {len(train_pixels)} training and {len(val_pixels)} val photos in {time.perf_counter() - start:.0f} s",
          flush=True)

    net = load_efficientnet_lite(args.backbone).to(memory_format=torch.channels_last).eval()  # BN stats frozen
    cut = len(net._blocks) - args.unfreeze
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    trainable = [*net._blocks[cut:], net._conv_head, net._bn1]
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad_(True)

    def features(pixels: torch.Tensor) -> torch.Tensor:
        x = ((pixels.float() - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            x = net._swish(net._bn0(net._conv_stem(x)))
            for block in net._blocks[:cut]:
                x = block(x, drop_connect_rate=0.0)
        for block in net._blocks[cut:]:
            x = block(x, drop_connect_rate=0.0)
        return F.adaptive_avg_pool2d(net._swish(net._bn1(net._conv_head(x))), 1).flatten(1)

    offset = (big - size) // 2
    centre = train_pixels[:, :, offset:offset + size, offset:offset + size]
    with torch.no_grad():
        pretrained = torch.cat([features(centre[i:i + 64]) for i in range(0, len(centre), 64)])
    head = torch.nn.Parameter(F.normalize(torch.stack([pretrained[train_labels == c].mean(0)
                                                      for c in range(classes)]), dim=1))
    rates = (1e-4, 1e-3)
    optimiser = torch.optim.AdamW([{"params": [p for m in trainable for p in m.parameters()], "lr": rates[0]},
                                   {"params": [head], "lr": rates[1]}], weight_decay=1e-4)
    margin, scale, batch = 0.2, 20.0, 32

    def val_cosines() -> torch.Tensor:
        with torch.no_grad():
            pooled = torch.cat([features(val_pixels[i:i + 64]) for i in range(0, len(val_pixels), 64)])
            return F.normalize(pooled, dim=1) @ F.normalize(head, dim=1).T

    def accuracy(cosines: torch.Tensor) -> float:
        return (cosines.argmax(1) == val_labels).float().mean().item()

    print(f"epoch 0 (class means of the pretrained features) val accuracy {accuracy(val_cosines()):.4f}", flush=True)
    steps, step = args.epochs * math.ceil(len(train_pixels) / batch), 0
    for epoch in range(1, args.epochs + 1):
        began, total, order = time.perf_counter(), 0.0, torch.randperm(len(train_pixels))
        for first in range(0, len(order), batch):
            chosen = order[first:first + batch]
            for group, rate in zip(optimiser.param_groups, rates):
                group["lr"] = rate * 0.5 * (1 + math.cos(math.pi * step / steps))
            crops = centre[chosen].clone()
            flip = torch.tensor([random.random() < 0.5 for _ in chosen])
            crops[flip] = crops[flip].flip(3)
            cosines = F.normalize(features(crops), dim=1) @ F.normalize(head, dim=1).T
            targets = train_labels[chosen]
            theta = torch.acos(cosines.gather(1, targets[:, None]).clamp(-1 + 1e-6, 1 - 1e-6))
            loss = F.cross_entropy(scale * cosines.scatter(1, targets[:, None], torch.cos(theta + margin)), targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            total += loss.item()
        cosines = val_cosines()
        print(f"epoch {epoch} loss {total / math.ceil(len(order) / batch):.3f} val accuracy {accuracy(cosines):.4f} "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    if args.save:
        np.save(args.save, cosines.numpy())


if __name__ == "__main__":
    main()
