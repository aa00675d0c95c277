"""Page-cache prewarm."""
