"""A batch of film files goes on past the ones that cannot be read, each with its reason."""
from helpers import FILM, png_bytes

from pneumo_core.errors import ImageError
from pneumo_core.imaging.films import read_each


def test_a_bad_file_in_a_batch_is_reported_and_the_rest_are_read(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "notes.png"
    good.write_bytes(png_bytes(FILM))
    bad.write_text("not an image")
    read = list(read_each([str(bad), str(good)]))
    assert [path for path, _, _ in read] == [str(bad), str(good)]        # in the order given
    (_, no_film, error), (_, film, no_error) = read
    assert no_film is None and isinstance(error, ImageError)
    assert no_error is None and film.gray.shape == FILM.shape
