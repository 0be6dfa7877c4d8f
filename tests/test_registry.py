"""The shared registry (reface_core.registry) and the packages that name things through it."""

import pytest

from reface_core.registry import Registry, UnknownNameError, did_you_mean, unknown_names_message


def test_register_get_and_did_you_mean_error():
    reg = Registry("widget", {"alpha": 1})
    reg.register("beta", 2, description="the second", aliases=("b",))

    @reg.register("gamma", description="decorated")
    class Gamma:
        """A gamma widget."""

    assert reg.get("beta") == 2 and reg["b"] == 2 and reg.get("gamma") is Gamma
    assert reg.names() == ["alpha", "beta", "gamma"] and "b" in reg and len(reg) == 3
    assert reg.describe() == [("alpha", ""), ("beta", "the second"), ("gamma", "decorated")]
    assert reg.canonical("b") == "beta"
    with pytest.raises(UnknownNameError) as e:
        reg.get("betta")
    assert str(e.value) == "unknown widget 'betta'; did you mean 'beta'? (known: alpha, beta, gamma)"
    # Callers that caught KeyError or ValueError before keep working.
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert reg.get("nope", None) is None
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 3)


def test_lazy_targets_custom_errors_and_hints():
    class MyError(UnknownNameError):
        pass

    reg = Registry("codec", {"json": "json:dumps"}, error=MyError, hint="or a file path")
    import json
    assert reg.load("json") is json.dumps
    with pytest.raises(MyError, match=r"unknown codec 'jsn'; did you mean 'json'\? "
                                      r"\(known: json; or a file path\)"):
        reg.load("jsn")
    assert str(reg.error("x", where="config.yaml")).startswith("config.yaml: unknown codec 'x'")
    assert did_you_mean("zzz", ["json"]) == ""
    assert unknown_names_message("field", ["learning_rat"], ["learning_rate", "seed"]) == \
        "unknown field(s) 'learning_rat' (did you mean 'learning_rate'?)"


@pytest.mark.parametrize("lookup, message", [
    ("faces.detection:get_detector", "unknown face detector 'dlib-hogg'; did you mean 'dlib-hog'"),
    ("faces.embedding:get_embedder", "unknown face embedder 'dlb'; did you mean 'dlib'"),
    ("captioning.extractors:get_extractor", "unknown attribute backend 'ofline'; did you mean 'offline'"),
    ("captioning.vocabulary:get_spec", "unknown attribute 'smilling'; did you mean 'smiling'"),
    ("degradations.presets:get_preset", "unknown degradation preset 'gfpgn'; did you mean 'gfpgan'"),
    ("reface_core.assets:get_asset", "unknown asset 'codeformr'; did you mean 'codeformer'"),
    ("benchmarks.restorers:create_restorer", "unknown method 'bicubc'; did you mean 'bicubic'"),
    ("benchmarks.metrics:get_spec", "unknown metric 'psnrr'; did you mean 'psnr'"),
    ("mgfr.presets:get_preset", "unknown MGFR base preset 'tinyy'; did you mean 'tiny'"),
    ("reface_hq.executor:get_executor", "unknown executor 'locl'; did you mean 'local'"),
])
def test_every_package_speaks_the_same_error(lookup, message):
    import importlib
    module, _, name = lookup.partition(":")
    fn = getattr(importlib.import_module(module), name)
    bad = message.split("'")[1]
    with pytest.raises(UnknownNameError) as e:
        fn(bad)
    assert str(e.value).startswith(message) and "(known: " in str(e.value)
