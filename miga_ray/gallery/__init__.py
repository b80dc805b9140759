"""``<out>/index.html``: a static gallery of every job of an output directory or bucket prefix."""

from .page import GALLERY, PRESIGNED_GALLERY, gallery_cards, write_gallery

__all__ = ["GALLERY", "PRESIGNED_GALLERY", "gallery_cards", "write_gallery"]
