"""SafeTwin twin package."""
