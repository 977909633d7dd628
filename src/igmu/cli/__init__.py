"""The `igmu` command."""
