"""Radiograph augmentations for self-supervised pretraining: greyscale, gentle geometry, exposure changes.

Natural-image SSL recipes (strong colour jitter, grey-scale conversion, solarisation, flips,
tiny crops) destroy what matters in a chest X-ray. These views keep one grey channel and vary
what really varies between radiographs: framing (crop, small rotation and shift), exposure
(brightness, contrast, gamma) and sharpness (blur).

Views are built from torchvision transforms plus lightly's GaussianBlur, ToTensor and
MultiViewTransform. lightly's ready-made SimCLR/MoCo/BYOL/DINO transforms cannot be told to
apply gamma or translation, so they are composed here instead.

Randomness comes from torch's and NumPy's global generators (lightly's blur draws from NumPy):
seed both (lightning's ``seed_everything(seed, workers=True)`` does, in every loader worker too)
and the views repeat exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from lightly.transforms import GaussianBlur, ToTensor
from lightly.transforms.multi_view_transform import MultiViewTransform
from PIL import Image

from store.errors import CxrAlError

SSL_METHODS = ("simclr", "moco", "byol", "simsiam", "dino")


@dataclass(frozen=True)
class XrayAugmentConfig:
    """Strength of each radiograph augmentation. The field defaults are the "standard" preset; pretraining
    uses the "gentle" preset unless told otherwise (AUGMENT_PRESETS, DEFAULT_PRESET)."""

    min_scale: float = 0.4  # random resized crop keeps 40-100% of the image area
    max_scale: float = 1.0
    rotation_degrees: float = 10.0  # patients are positioned within a few degrees
    translate: float = 0.05  # fraction of the width/height
    brightness: float = 0.3
    contrast: float = 0.3
    jitter_prob: float = 0.8
    gamma_range: tuple[float, float] = (0.75, 1.33)  # log-uniform, centred on 1
    gamma_prob: float = 0.5
    blur_prob: float = 0.3
    blur_sigmas: tuple[float, float] = (0.1, 1.5)
    # Off by default: laterality matters in chest X-rays (the heart lies on the patient's left;
    # situs inversus, dextrocardia and side-specific findings would be erased by a mirror image).
    hflip_prob: float = 0.0
    # DINO multi-crop: extra small views of a part of the image
    local_views: int = 6
    local_min_scale: float = 0.1
    local_max_scale: float = 0.4
    local_size_ratio: float = 96 / 224

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.min_scale <= self.max_scale <= 1.0, "need 0 < min_scale <= max_scale <= 1"),
            (0.0 < self.local_min_scale <= self.local_max_scale <= 1.0,
             "need 0 < local_min_scale <= local_max_scale <= 1"),
            (0.0 <= self.rotation_degrees <= 180.0, "rotation_degrees must be in [0, 180]"),
            (0.0 <= self.translate < 1.0, "translate must be in [0, 1)"),
            (self.brightness >= 0.0 and self.contrast >= 0.0, "brightness and contrast must be >= 0"),
            (0.0 < self.gamma_range[0] <= self.gamma_range[1], "gamma_range must be 0 < low <= high"),
            (0.0 < self.blur_sigmas[0] <= self.blur_sigmas[1], "blur_sigmas must be 0 < low <= high"),
            (self.local_views >= 0, "local_views must be >= 0"),
            (0.0 < self.local_size_ratio <= 1.0, "local_size_ratio must be in (0, 1]"),
        ]
        for prob_name in ("jitter_prob", "gamma_prob", "blur_prob", "hflip_prob"):
            checks.append((0.0 <= getattr(self, prob_name) <= 1.0, f"{prob_name} must be in [0, 1]"))
        for ok, message in checks:
            if not ok:
                raise CxrAlError(f"augmentation settings: {message}")


# Named settings a user picks with `cxr-al pretrain --augment NAME`.
AUGMENT_PRESETS: dict[str, XrayAugmentConfig] = {
    # XrayAugmentConfig's own values: SimCLR-like crops and exposure jitter, adapted to one grey channel
    "standard": XrayAugmentConfig(),
    # Gentle views for findings that are local intensity changes: large crops, little rotation and
    # exposure change, no gamma or blur (cf. MoCo-CXR, Sowrirajan et al. 2021, which dropped random
    # crops and colour jitter for chest X-rays because they can cut out or wash out the finding).
    # On four-class phantoms (strength 1.5-3, 32 px, SimCLR 20 epochs) the probe's macro-AUC with 24 / 96
    # labels was 0.73 / 0.86 against 0.66 / 0.80 with "standard"; on radiography2 (10 epochs) the all-label
    # probe's macro-AUC 0.955 against 0.916, on cxr4 0.941 against 0.947 (docs/benchmarks.md). The default.
    "gentle": XrayAugmentConfig(min_scale=0.7, rotation_degrees=5.0, translate=0.03, brightness=0.1,
                                contrast=0.1, gamma_prob=0.0, blur_prob=0.0),
}
DEFAULT_PRESET = "gentle"


def augment_preset(name: str) -> XrayAugmentConfig:
    """The augmentation settings called `name` (see AUGMENT_PRESETS)."""
    if name not in AUGMENT_PRESETS:
        raise CxrAlError(f"unknown augmentation preset {name!r}; choose from {', '.join(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[name]


class RandomGamma:
    """Random gamma curve (log-uniform in `gamma_range`): the exposure/processing differences between
    radiography systems. Written here because neither torchvision nor lightly has a random gamma
    transform; it draws from torch's generator so seeding torch makes it repeat."""

    def __init__(self, gamma_range: tuple[float, float], p: float):
        self.log_low, self.log_high = math.log(gamma_range[0]), math.log(gamma_range[1])
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p <= 0.0 or float(torch.rand(())) >= self.p:
            return img
        gamma = math.exp(float(torch.empty(()).uniform_(self.log_low, self.log_high)))
        return F.adjust_gamma(img, gamma)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(gamma=({math.exp(self.log_low):.3g}, "
                f"{math.exp(self.log_high):.3g}), p={self.p})")


def xray_view_transform(size: int, config: XrayAugmentConfig | None = None, *,
                        scale: tuple[float, float] | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """One random view: PIL 'L' image -> (1, size, size) float tensor in [0, 1], not normalised
    (GreyBackbone repeats the channel and applies the ImageNet statistics itself); `config` defaults to
    the DEFAULT_PRESET settings."""
    cfg = config or AUGMENT_PRESETS[DEFAULT_PRESET]
    if size < 8:
        raise CxrAlError(f"augmentation output size {size} is too small (need >= 8 px)")
    steps: list[Callable] = [
        T.Grayscale(num_output_channels=1),  # accept RGB input too; radiographs have one channel
        # rotate/shift the whole image first, then crop, so the crop trims the empty corners
        T.RandomAffine(degrees=cfg.rotation_degrees, translate=(cfg.translate, cfg.translate),
                       interpolation=T.InterpolationMode.BILINEAR, fill=0),
        T.RandomResizedCrop(size=size, scale=scale or (cfg.min_scale, cfg.max_scale), antialias=True),
    ]
    if cfg.hflip_prob > 0:
        steps.append(T.RandomHorizontalFlip(p=cfg.hflip_prob))
    steps += [
        # brightness and contrast only: hue and saturation do not exist in a greyscale image
        T.RandomApply([T.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast)], p=cfg.jitter_prob),
        RandomGamma(cfg.gamma_range, cfg.gamma_prob),
        GaussianBlur(prob=cfg.blur_prob, sigmas=cfg.blur_sigmas),
        ToTensor(),  # lightly's: (1, H, W) float32 in [0, 1]
        T.ToPureTensor(),  # a plain Tensor, not a tv_tensors.Image subclass
    ]
    return T.Compose(steps)


def ssl_transform(method: str, image_size: int, config: XrayAugmentConfig | None = None) -> MultiViewTransform:
    """The views a pretraining method needs: two global views, plus `local_views` small crops for DINO."""
    if method not in SSL_METHODS:
        raise CxrAlError(f"unknown SSL method {method!r}; choose from {', '.join(SSL_METHODS)}")
    cfg = config or AUGMENT_PRESETS[DEFAULT_PRESET]
    global_view = xray_view_transform(image_size, cfg)
    views = [global_view, global_view]
    if method == "dino" and cfg.local_views > 0:
        local_size = max(8, round(image_size * cfg.local_size_ratio))
        local_view = xray_view_transform(local_size, cfg, scale=(cfg.local_min_scale, cfg.local_max_scale))
        views += [local_view] * cfg.local_views
    return MultiViewTransform(views)
