"""Gymnasium environments of trustregion_lab (imported as ``trustregion_lab.envs``)."""
