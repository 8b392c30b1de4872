"""SafeTwin safety package."""
