"""Built-in target plugins: one module per model family."""
