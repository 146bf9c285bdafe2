"""`evospec_hf.utils`: the shared checks every file format and option goes through."""

import pytest

from evospec_hf.utils import check_format, check_int


def test_check_format_returns_the_version_it_accepts():
    assert check_format({"format": "f", "version": 2}, "f", newest=3, what="an f file", where="x.json") == 2


@pytest.mark.parametrize(
    "data, message",
    [
        ({"format": "g", "version": 1}, "x.json is not an f file: its 'format' is 'g', expected 'f'"),
        ({"version": 1}, "its 'format' is None"),
        ({"format": "f"}, "x.json is corrupt: its 'version' is None, expected 1 to 3"),
        ({"format": "f", "version": 0}, "its 'version' is 0"),
        ({"format": "f", "version": True}, "its 'version' is True"),  # a bool is not a version
        ({"format": "f", "version": "1"}, "its 'version' is '1'"),  # nor a string
        ({"format": "f", "version": 4}, "format version 4, but this evospec_hf reads versions 1 to 3: .* newer"),
    ],
)
def test_check_format_refuses_with_a_message_that_names_the_file(data, message):
    with pytest.raises(ValueError, match=message):
        check_format(data, "f", newest=3, what="an f file", where="x.json")


def test_check_int_refuses_bools():
    with pytest.raises(ValueError):
        check_int("n", True)
