"""`frozenvl eval flamingo` writes each model's results in a folder named by the model: a second model never
overwrites the first one's."""

from pathlib import Path

from frozenvl.cli import eval as eval_cli


def test_default_folder_is_named_by_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = eval_cli.default_out_dir("runs/demo/flamingo/checkpoints/step-00000200", "x", "y", "synth_icl_words")
    b = eval_cli.default_out_dir("runs/other/checkpoints/step-00000200", "x", "y", "synth_icl_words")
    assert a == Path("runs/eval/demo-flamingo-checkpoints-step-00000200/synth_icl_words")
    assert a != b
    assert eval_cli.default_out_dir("./runs/demo/flamingo/checkpoints/step-00000200/", "x", "y",
                                    "synth_icl_words") == a  # the same folder spelled another way
    outside = eval_cli.default_out_dir("/opt/models/my flamingo", "x", "y", "coco")
    assert outside == Path("runs/eval/opt-models-my-flamingo/coco")
    untrained = eval_cli.default_out_dir(None, "embedded:smollm2-135m", "embedded:efficientnet-lite0", "coco")
    assert untrained == Path("runs/eval/untrained-embedded-smollm2-135m-embedded-efficientnet-lite0/coco")


def test_the_command_uses_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "runs" / "m1"
    model.mkdir(parents=True)
    seen = []

    def stop(path, **kwargs):
        seen.append(Path(path))
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(eval_cli, "check_writable", stop)
    code = eval_cli.main(["flamingo", "--model", str(model), "--task", "synth_icl_words", "--data", str(tmp_path)])
    assert code == 2 and seen == [Path("runs/eval/m1/synth_icl_words")]


def test_out_still_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []

    def stop(path, **kwargs):
        seen.append(Path(path))
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(eval_cli, "check_writable", stop)
    assert eval_cli.main(["flamingo", "--task", "synth_icl_words", "--data", str(tmp_path), "--out", "elsewhere"]) == 2
    assert seen == [Path("elsewhere")]
