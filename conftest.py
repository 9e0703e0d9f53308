"""Makes the checkout importable first (so worktrees and fresh clones test their own code)."""
