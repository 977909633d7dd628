"""Self-contained HTML (and Markdown) reports built only from the results store."""
