"""The app's request checks, without gradio: uploads judged by content and declared size,
parameter ranges named in the message, job folders inside the output folder."""

from __future__ import annotations

import time

import pytest

from tests.app.bad_files import object_on_white, png_bomb, text_named_png
from voxforge.app.requests import (
    JobFolders,
    RequestError,
    RequestLimits,
    check_choice,
    check_float,
    check_image_uploads,
    check_int,
    user_message,
)
from voxforge.errors import UserError


def test_an_image_passes_by_its_content_whatever_its_name(tmp_path):
    good = object_on_white(tmp_path / "photo.txt")  # a PNG named .txt
    assert check_image_uploads([str(good)]) == [good]
    assert check_image_uploads({"path": str(good)}) == [good]  # gradio's FileData shape


def test_a_text_file_named_png_is_refused(tmp_path):
    fake = text_named_png(tmp_path / "fake.png")
    with pytest.raises(RequestError, match=r"^fake\.png: not an image"):
        check_image_uploads([str(fake)])


def test_a_png_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1000  # 400 M pixels declared in a few hundred bytes
    start = time.perf_counter()
    with pytest.raises(RequestError, match=r"bomb\.png: the image declares more than \d+ pixels"):
        check_image_uploads([str(bomb)])
    assert time.perf_counter() - start < 1.0  # decoding 400 M pixels would take far longer
    message = str(pytest.raises(RequestError, check_image_uploads, [str(bomb)]).value)
    assert str(tmp_path) not in message  # the page never sees the server's paths


def test_upload_counts_sizes_and_empty_files(tmp_path):
    limits = RequestLimits(max_images=2, max_image_bytes=10_000)
    good = object_on_white(tmp_path / "a.png")
    with pytest.raises(RequestError, match="at least one image"):
        check_image_uploads([], limits)
    with pytest.raises(RequestError, match="3 images: at most 2"):
        check_image_uploads([str(good)] * 3, limits)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(RequestError, match="empty.png: the file is empty"):
        check_image_uploads([str(tmp_path / "empty.png")], limits)
    big = tmp_path / "big.png"
    big.write_bytes(good.read_bytes() + b"\0" * 20_000)
    with pytest.raises(RequestError, match="big.png: 2\\d+ bytes, larger than"):
        check_image_uploads([str(big)], limits)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "structure steps must be between 1 and 200, got 0"),
        (1000, "structure steps must be between 1 and 200, got 1000"),
        (2.5, "whole number"),
        ("10", "whole number"),
        (True, "whole number"),
    ],
)
def test_integer_ranges_name_the_parameter(value, message):
    with pytest.raises(RequestError, match=message):
        check_int("structure steps", value, 1, 200)


def test_float_and_choice_checks():
    assert check_int("seed", 7.0, 0, 10) == 7
    assert check_float("guidance", 3, 0.0, 30.0) == 3.0
    for bad in (-0.5, 31.0, float("nan"), "3"):
        with pytest.raises(RequestError, match="guidance"):
            check_float("guidance", bad, 0.0, 30.0)
    assert check_choice("mode", "stochastic", ("stochastic", "multidiffusion")) == "stochastic"
    with pytest.raises(RequestError, match="mode must be one of stochastic, multidiffusion, got 'average'"):
        check_choice("mode", "average", ("stochastic", "multidiffusion"))


def test_job_folders_are_fresh_and_inside_the_output_folder(tmp_path):
    jobs = JobFolders(tmp_path / "out")
    first, second = jobs.new("image_to_3d"), jobs.new("image_to_3d")
    assert first != second and first.is_dir() and second.is_dir()
    assert jobs.contains(first) and first.parent == (tmp_path / "out" / "image_to_3d").resolve()
    assert not jobs.contains(tmp_path / "elsewhere")


def test_library_messages_lose_the_server_paths(tmp_path):
    path = tmp_path / "cache" / "photo.png"
    assert user_message(UserError(f"{path}: the image is fully transparent"), [path]) == (
        "photo.png: the image is fully transparent"
    )
