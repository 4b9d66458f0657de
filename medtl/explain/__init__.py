"""medtl.explain."""
