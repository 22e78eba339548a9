"""qwen."""
