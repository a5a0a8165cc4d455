import click
import pytest

from skinlesion.cli import main
from skinlesion.classes import CODES, ISIC2018_CODES
from skinlesion.imaging import RESIZE_POLICIES
from skinlesion.models import MODELS, VIEW_COUNTS
from skinlesion.predict import OUTPUT_COLUMNS
from skinlesion.presets import AUGMENTATIONS
from skinlesion.splits import BALANCE_PRESETS, PROTOCOLS, SPLITS
from skinlesion.training import IMBALANCE, SELECT


def option(command: str, name: str) -> click.Option:
    return next(p for p in main.commands[command].params if p.name == name)


@pytest.mark.parametrize("command, name, names", [
    ("prepare", "balance_name", list(BALANCE_PRESETS)), ("prepare", "protocol", list(PROTOCOLS)),
    ("prepare", "policy", list(RESIZE_POLICIES)), ("train", "imbalance", list(IMBALANCE)),
    ("train", "select", list(SELECT)), ("compare", "select", list(SELECT)), ("evaluate", "split", list(SPLITS)),
    ("ensemble", "views", [str(n) for n in VIEW_COUNTS]), ("train", "augmentation", list(AUGMENTATIONS)),
    ("predict", "output_format", list(OUTPUT_COLUMNS)),
])
def test_the_command_line_offers_exactly_the_names_the_library_knows(command, name, names):
    assert list(option(command, name).type.choices) == names


def test_the_command_line_help_names_every_model_and_class():
    assert option("compare", "models").default == ",".join(MODELS)
    assert all(name in option("train", "model_name").help for name in MODELS)
    assert ",".join(CODES) in option("predict", "output").help
    assert ",".join(ISIC2018_CODES) in option("predict", "output_format").help
