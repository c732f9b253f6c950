"""Config files: every config (extract, curation, recipe) is read by pipeline.yaml_file.load_yaml."""

import pytest

from manifests.curate import load_curate_config
from pipeline.config import load_job_config
from pipeline.errors import SignfeatError
from trainer.recipe import load_recipe


@pytest.mark.parametrize("load, text", [
    (load_job_config, "extractors:\n  - name: dinov2\n    tiny: true\n    tiny: false\n"),
    (load_curate_config, "min_frames: 8\nmax_frames: 100\nmin_frames: 100000\n"),
    (load_recipe, "optim: {lr: 1e-4}\ndata: {}\noptim: {max_steps: 3}\n"),
])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, load, text):
    """PyYAML's safe_load keeps the last: `tiny: false` silently loaded the pretrained model, a second `optim:`
    replaced the first."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SignfeatError, match=r"given twice \(line \d and line \d\)"):
        load(path)


@pytest.mark.parametrize("load", [load_job_config, load_curate_config, load_recipe])
def test_a_file_that_is_not_text_is_one_line(tmp_path, load):
    """`extract --config ph.parquet` (arguments swapped) was a UnicodeDecodeError traceback."""
    path = tmp_path / "m.parquet"
    path.write_bytes(b"PAR1\x15\x04\x15\xa0\xff\xfe")
    with pytest.raises(SignfeatError, match="not a UTF-8 text file"):
        load(path)
