"""The four evaluation entry points: --help explains each, defaults stated in the help match the parser."""

from __future__ import annotations

import pytest
from metrics_helpers import load_script

SCRIPTS = {
    "eval_canny": "eval_canny.json",
    "eval_landmark": "eval_landmark.json",
    "eval_segm": "eval_segm",
    "eval_fid": "eval_fid.json",
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_explains_inputs_outputs_and_sample_choice(name, capsys):
    script = load_script(name)
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert SCRIPTS[name] in text and "source/image_{i}.png" in text
    assert "--sample-index" in text and "--all-samples" in text and "(default 0)" in text
    args = script.parse_args(["folder"])
    assert args.sample_index == 0 and not args.all_samples and args.out is None
