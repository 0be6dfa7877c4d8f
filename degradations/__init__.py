"""Seeded, recorded degradation synthesis (blur, resize, noise, JPEG) for LQ faces."""
