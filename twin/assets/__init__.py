"""Bundled robot descriptions (URDF) and their hardware data."""
