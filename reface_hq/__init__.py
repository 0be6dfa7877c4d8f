"""Build, verify and export the identity-grouped Reface-HQ face dataset."""
