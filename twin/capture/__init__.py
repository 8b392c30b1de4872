"""Real-to-sim capture: ingest, fusion, segmentation, export."""
