"""medtl.train."""
