"""editing package."""
