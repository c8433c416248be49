"""trustregion_lab.policies."""
