"""medtl.data."""
