from pneumo_core.backbones import BACKBONES
from pneumo_core.cam import METHODS
from pneumo_core.cli import _parser
from pneumo_core.settings import load_settings
from pneumo_core.tuning import ALGORITHMS


def _choices(command: str, option: str) -> list:
    parser = _parser(load_settings())
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return list(next(a for a in sub._actions if option in a.option_strings).choices)


def test_command_line_choices_match_the_library():
    assert sorted(_choices("train", "--backbone")) == sorted(BACKBONES)
    assert sorted(_choices("train", "--tuner")) == sorted(ALGORITHMS)
    assert sorted(_choices("cam", "--method")) == sorted(METHODS)
