"""Paths for people: base names only for files directly in the one directory named above them."""

from __future__ import annotations

from snapledger.adapters.cli.output.base import in_one_directory, short


def test_a_sibling_directory_keeps_its_whole_path() -> None:
    directory = in_one_directory(["/img/web.s1", "/img/web.s0"])
    assert directory == "/img"
    assert short("/img/web.s1", directory) == "web.s1"
    assert short("/img2/web.s1", directory) == "/img2/web.s1"  # begins with "/img", is not in it
    assert short("/img/sub/web.s1", directory) == "/img/sub/web.s1"
    assert short("/top", in_one_directory(["/top", "/other"])) == "top"
    assert in_one_directory(["/a/x", "/b/x"]) is None and short("/a/x", None) == "/a/x"
