"""medtl.report."""
