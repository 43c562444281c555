"""The scoring layer: metrics, and everything that turns maps into numbers, pictures and result files."""
