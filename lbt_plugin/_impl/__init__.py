"""Private implementation of lbt-plugin. Nothing here is public API."""
