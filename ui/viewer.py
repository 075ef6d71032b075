"""The radiograph viewer's pixel work: window/level (brightness, contrast), zoom and pan, PNG for the browser."""

from __future__ import annotations

import io

import numpy as np
import streamlit as st
from PIL import Image

from store.images import read_grey

MAX_DISPLAY_SIDE = 1024  # the browser gets at most this many pixels on the long side


def window_lut(brightness: float, contrast: float) -> np.ndarray:
    """A 256-entry uint8 lookup table: window width 255/contrast centred on a level moved by brightness.

    brightness in [-100, 100] (0: unchanged, positive: brighter), contrast > 0 (1: unchanged)."""
    width = 255.0 / max(float(contrast), 1e-3)
    level = 127.5 - float(brightness) * 1.275
    values = (np.arange(256, dtype=np.float32) - (level - width / 2)) / width * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def zoom_crop(grey: np.ndarray, zoom: float, center_x: float = 0.5, center_y: float = 0.5) -> np.ndarray:
    """The part of the image a zoom factor (>= 1) shows around a centre given as fractions of width and height."""
    zoom = max(1.0, float(zoom))
    h, w = grey.shape
    ch, cw = max(1, int(round(h / zoom))), max(1, int(round(w / zoom)))
    top = int(round(np.clip(center_y * h - ch / 2, 0, h - ch)))
    left = int(round(np.clip(center_x * w - cw / 2, 0, w - cw)))
    return grey[top:top + ch, left:left + cw]


def fit(grey: np.ndarray, max_side: int = MAX_DISPLAY_SIDE) -> np.ndarray:
    """Downscale (never upscale) so the long side is at most max_side pixels."""
    h, w = grey.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return grey
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))


def render_view(grey: np.ndarray, *, brightness: float = 0.0, contrast: float = 1.0, zoom: float = 1.0,
                center_x: float = 0.5, center_y: float = 0.5, max_side: int = MAX_DISPLAY_SIDE) -> np.ndarray:
    """What the viewer shows: the zoomed region, fitted to the display size, through the window."""
    view = fit(zoom_crop(grey, zoom, center_x, center_y), max_side)
    return window_lut(brightness, contrast)[view]


def png(grey: np.ndarray) -> bytes:
    """Fast PNG encoding (lossless: a diagnostic image is never JPEG-compressed here)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@st.cache_data(max_entries=256, show_spinner=False)
def thumbnail(path: str, side: int) -> bytes:
    """A small PNG of an image file (gallery cards, neighbour panels), kept for the images seen lately."""
    return png(fit(read_grey(path), side))
