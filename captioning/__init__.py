"""Facial attribute extraction and attribute / negative prompts."""
