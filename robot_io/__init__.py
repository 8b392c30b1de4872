"""SafeTwin robot_io package."""
