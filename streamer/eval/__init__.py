"""Temporal quality of stylized video: generated clips, flicker / warp error / lag metrics, plots."""
