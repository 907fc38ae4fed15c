"""Shared by the WikiText-103 tests."""

from __future__ import annotations

from pathlib import Path

from data_modules.wikitext import WikiText103DataModule


def make_module(tmp_path: Path, **kwargs) -> WikiText103DataModule:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("tgt_len", 8)
    return WikiText103DataModule(str(tmp_path), **kwargs)
