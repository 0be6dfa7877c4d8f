"""MGFR: multi-modal guided face restoration on a frozen Stable Diffusion prior."""
