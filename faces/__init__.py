"""Face detection, landmarks, FFHQ alignment, identity embeddings and attributes."""
