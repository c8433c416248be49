"""trustregion_lab.train."""
