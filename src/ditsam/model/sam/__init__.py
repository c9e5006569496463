"""SAM's building blocks with the official checkpoint parameter names."""
