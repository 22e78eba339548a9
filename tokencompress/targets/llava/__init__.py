"""llava."""
