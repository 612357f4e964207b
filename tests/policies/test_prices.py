"""The litellm price table, read from disk without importing litellm."""

from __future__ import annotations

import json
import subprocess
import sys

from policies.prices import TABLE_FILE, bundled_table, load_table, lookup


def test_bundled_table_is_parsed_once():
    assert bundled_table() is bundled_table()
    assert "gpt-4o" in bundled_table()


def test_reading_the_table_does_not_import_litellm():
    code = (
        "import sys; from policies.prices import bundled_table; "
        "assert len(bundled_table()) > 100; assert 'litellm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_package_gives_an_empty_table():
    assert load_table("no_such_package_effgate") == {}
    assert load_table("json") == {}  # a package without the file


def test_non_mapping_table_is_ignored(tmp_path, monkeypatch):
    package = tmp_path / "fakeprices"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / TABLE_FILE).write_text(json.dumps([1, 2]))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_table("fakeprices") == {}
    (package / TABLE_FILE).write_text(json.dumps({"m": {"input_cost_per_token": 1e-6}}))
    assert load_table("fakeprices") == {"m": {"input_cost_per_token": 1e-6}}


def test_lookup_by_provider_prefix_then_name():
    table = {
        "m1": {
            "input_cost_per_token": 1.5e-07,
            "output_cost_per_token": 6e-07,
            "max_input_tokens": 1000,
            "max_output_tokens": 100,
        },
        "prov/m2": {
            "input_cost_per_token": 2,
            "output_cost_per_token": "n/a",
            "max_tokens": 50,
            "max_input_tokens": True,
            "cache_read_input_token_cost": False,
        },
        "sample_spec": {"input_cost_per_token": 0.0},
        "m3": "not an entry",
        "m4": {"input_cost_per_token": 1e-06},
        "prov/m4": {"input_cost_per_token": 2e-06},
    }
    e4 = lookup("prov", "m4", table)
    assert e4 is not None and (e4.key, e4.input_usd_per_mtok) == ("prov/m4", 2.0)
    e1 = lookup("openai", "m1", table)
    assert e1 is not None
    assert (e1.key, e1.input_usd_per_mtok, e1.output_usd_per_mtok) == ("m1", 0.15, 0.6)
    assert (e1.context_window, e1.max_output_tokens, e1.cached_input_usd_per_mtok) == (
        1000,
        100,
        None,
    )
    e2 = lookup("prov", "m2", table)
    assert e2 is not None and e2.key == "prov/m2"
    assert (e2.input_usd_per_mtok, e2.output_usd_per_mtok) == (2_000_000.0, None)
    assert (e2.context_window, e2.cached_input_usd_per_mtok) == (50, None)
    assert lookup("x", "sample_spec", table) is None
    assert lookup("x", "m3", table) is None
    assert lookup("x", "nothing", table) is None
    assert lookup("openai", "gpt-4o") is not None  # the bundled table by default
