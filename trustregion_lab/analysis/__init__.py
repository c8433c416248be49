"""trustregion_lab.analysis."""
