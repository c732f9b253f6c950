"""signfeat motion: SMPL-X parameters (read or estimated from video) -> 623-d HumanML3D features and back."""
