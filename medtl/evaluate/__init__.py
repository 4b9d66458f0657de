"""medtl.evaluate."""
