"""Built-in strategy plugins (each registered through the same hooks as third-party ones)."""
