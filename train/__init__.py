"""SafeTwin train package."""
