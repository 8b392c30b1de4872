"""SafeTwin cli package."""
