"""Fixtures of the motion tests: one synthetic SMPL-X model folder per session (motion/synthetic.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from motion.synthetic import write_synthetic_smplx

    root = tmp_path_factory.mktemp("smplx_model")
    write_synthetic_smplx(root)
    return root


@pytest.fixture(scope="session")
def body_model(model_dir):
    from motion.body_model import BodyModel, BodyModelSettings

    return BodyModel(BodyModelSettings(model_dir=str(model_dir)))
