"""LPIPS fixtures (the `lpips` package 0.1.4, richzhang/PerceptualSimilarity).

Makes:
  lpips_tiny -> lpips_{alex,vgg}_tiny_weights.safetensors (narrow nets), lpips_{alex,vgg}_lin.safetensors
                (the package's trained lin layers), lpips.{safetensors,json}

`lpips.LPIPS(net=..., pretrained=True, pnet_rand=True)`: the package's trained `lin` layers
(shipped in its wheel, `weights/v0.1/{alex,vgg}.pth`) on a *random* backbone, since the
ImageNet backbones cannot be downloaded here. The backbones are torchvision's `alexnet` and
`vgg16` `features`; torchvision is not installed in the reference venv, so the two `features`
stacks are built here exactly as torchvision 0.2x defines them (layer for layer, same indices)
and handed to `lpips` through a stand-in `torchvision.models` module (and scipy, which only
the package's trainer imports, by a stand-in when it is missing).
"""

from __future__ import annotations

import sys
import types

import torch

from pathlib import Path

from common import asset_path, perturb_, tensor_table


# torchvision's channel counts, and the narrow ones the fixture uses (the same layers and
# indices; the real widths would make a 59 MB weight file for VGG).
ALEX_CHANNELS = dict(real=(64, 192, 384, 256, 256), tiny=(8, 12, 16, 12, 12))
VGG_CHANNELS = dict(real=(64, 128, 256, 512, 512), tiny=(4, 6, 8, 8, 8))
WIDTHS = "tiny"


def _alexnet_features() -> torch.nn.Sequential:
    nn = torch.nn
    c = ALEX_CHANNELS[WIDTHS]
    return nn.Sequential(
        nn.Conv2d(3, c[0], kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c[0], c[1], kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c[1], c[2], kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c[2], c[3], kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c[3], c[4], kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _vgg16_features() -> torch.nn.Sequential:
    nn = torch.nn
    a, b, c, d, e = VGG_CHANNELS[WIDTHS]
    layers, channels = [], 3
    for v in [a, a, "M", b, b, "M", c, c, c, "M", d, d, d, "M", e, e, e, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


def _install_torchvision_stand_in() -> None:
    class _Net(torch.nn.Module):
        def __init__(self, features):
            super().__init__()
            self.features = features

    def alexnet(pretrained=False, **_):
        assert not pretrained, "no ImageNet weights here"
        return _Net(_alexnet_features())

    def vgg16(pretrained=False, **_):
        assert not pretrained, "no ImageNet weights here"
        return _Net(_vgg16_features())

    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.alexnet, models.vgg16 = alexnet, vgg16
    tv.models = models
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.models", models)
    # `import lpips` also imports its trainer, which needs scipy only for functions not used here.
    try:
        import scipy.ndimage  # noqa: F401
    except ImportError:
        scipy = types.ModuleType("scipy")
        ndimage = types.ModuleType("scipy.ndimage")
        ndimage.zoom = None
        scipy.ndimage = ndimage
        sys.modules.setdefault("scipy", scipy)
        sys.modules.setdefault("scipy.ndimage", ndimage)


@torch.no_grad()
def make_lpips_tiny(w) -> dict:
    import numpy as np
    from PIL import Image

    _install_torchvision_stand_in()
    import lpips

    photo = Image.open(asset_path("images", "chelsea.png")).convert("RGB").resize((64, 48), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    g = torch.Generator().manual_seed(19000)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    other = torch.flip(x, dims=[3])
    pair0 = torch.cat([x, x, x])
    pair1 = torch.cat([x, noisy, other])
    tensors, verification = dict(in0=pair0, in1=pair1), {}
    widths = dict(alex=ALEX_CHANNELS["tiny"], vgg=VGG_CHANNELS["tiny"])
    for net, seed in (("alex", 19001), ("vgg", 19002)):
        torch.manual_seed(seed)
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        # The package's own forward on narrow nets: its lin layers rebuilt for their widths.
        model.chns = list(widths[net])
        model.lins = torch.nn.ModuleList([lpips.NetLinLayer(c, use_dropout=True) for c in widths[net]])
        for i, lin in enumerate(model.lins):
            setattr(model, f"lin{i}", lin)
        perturb_(model, torch.Generator().manual_seed(seed + 100), named=True)
        # The trained lin layers are non-negative (the package clamps them in training).
        for lin in model.lins:
            lin.model[1].weight.abs_()
        model = model.eval()
        d = model(pair0, pair1).flatten()
        tensors[f"{net}_distance"] = d
        # The backbone in torchvision's keys (features.N.*), the lin layers in the package's.
        weights = {}
        for k, v in model.state_dict().items():
            if k.startswith("net.slice"):
                _, _, index, param = k.split(".")
                weights[f"features.{index}.{param}"] = v
            elif k.startswith("lin") and not k.startswith("lins."):
                weights[k] = v
        w.safetensors(f"lpips_{net}_tiny_weights.safetensors", weights)
        verification[f"{net}: distances"] = [float(v) for v in d]
        # The package's trained lin layers (its v0.1 weights), as shipped, for the real nets.
        lins = torch.load(Path(lpips.__file__).parent / "weights/v0.1" / f"{net}.pth", map_location="cpu")
        w.safetensors(f"lpips_{net}_lin.safetensors", dict(lins))
    w.safetensors("lpips.safetensors", tensors)
    w.json("lpips.json", dict(
        description="lpips 0.1.4 LPIPS(net, pnet_rand=True), version 0.1, spatial average, run by the package's "
                    "own forward on narrow torchvision-layout backbones (channels below) with lin layers of "
                    "their widths, every parameter then perturbed (p += 0.05 N(0,1), seed + 100), the lin weights made non-negative (|w|); "
                    "in0/in1 in [-1, 1]: "
                    "chelsea.png resized to 64x48 (PIL bicubic) against itself, itself + 0.2 N(0,1) clamped, "
                    "and itself mirrored",
        seeds=dict(noise=19000, alex=19001, vgg=19002),
        channels=dict(alex=list(ALEX_CHANNELS["tiny"]), vgg=list(VGG_CHANNELS["tiny"])),
        verification=verification, tensors=tensor_table(tensors)))
    return verification
