"""Issue 17, section 2: every setting has a declared type and range (tuilm.config.RANGES beside the dataclasses),
checked once at load; a wrong value is one ConfigError naming the key, the value and what is allowed.

Issue 27 (22): the keys come from the config dataclasses' fields, not from RANGES, so a numeric field added
without a range fails here, and every numeric setting refuses NaN."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import run_tuilm
from tuilm.config import RANGES, SECTIONS, _field_type, all_keys, apply_overrides, from_dict
from tuilm.errors import ConfigError
from tuilm.formatting import short

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
FIELD_KEYS = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls) if f"{s}.{f.name}" in all_keys()]
NUMBER_KEYS = sorted(k for k in FIELD_KEYS if _field_type(k) in (int, float))
OTHER_KEYS = sorted(k for k in FIELD_KEYS if k not in NUMBER_KEYS)
WRONG_TYPES = st.one_of(
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(alphabet="abcxyz-!", min_size=1, max_size=8).filter(lambda s: s.lower() not in ("yes", "no", "on", "off")),
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e309, -1, 0, 0.5, 2, 2**63, 2**70, 1e30]),
)


def load(key: str, value):
    section, name = key.split(".")
    return from_dict({section: {name: value}})


def out_of_range(key: str, value) -> bool:
    allowed = RANGES[key]
    if key == "model.d_ff" and value == 0:
        return False  # 0 means unset (4 * d_model)
    if isinstance(value, float) and allowed.integer and math.isfinite(value) and not value.is_integer():
        return True
    return value not in allowed


@pytest.mark.parametrize("key", NUMBER_KEYS)
def test_every_numeric_field_has_a_range_and_refuses_nan_and_inf(key):
    assert key in RANGES, f"{key} is a number without a range: add it to tuilm.config.RANGES"
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(key, value)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            apply_overrides(from_dict({}), [f"{key}={value}"])


@pytest.mark.parametrize("key", NUMBER_KEYS)
def test_a_recipes_text_is_not_a_number(key):
    with pytest.raises(ConfigError, match=f"{key.replace('.', r'[.]')} must be .*got '1'"):
        load(key, "1")


@pytest.mark.parametrize(
    "override",
    [
        *(
            f"{key}={v}"
            for key in ("init_tolerance", "eps_ratio", "attn_logit_limit", "entropy_floor", "logz_drift")
            for v in ("nan", "inf", "-1")
        ),
        "log_interval=1e30",
    ],
)
def test_the_issues_health_thresholds_and_log_interval_are_ranged(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"\.{key} must be .*got"):
        apply_overrides(from_dict({}), [override])


def test_the_command_line_still_takes_what_toml_refuses():
    config = apply_overrides(from_dict({}), ["lr=1.", "min_lr=.5", "batch_size=007"])
    assert (config.train.lr, config.train.min_lr, config.train.batch_size) == (1.0, 0.5, 7)


@FUZZ
@given(key=st.sampled_from(NUMBER_KEYS), value=NUMBERS, data=st.data())
def test_every_number_out_of_its_range_is_refused_naming_key_value_and_range(key, value, data):
    if not out_of_range(key, value):
        value = data.draw(NUMBERS.filter(lambda v: out_of_range(key, v)), label="out of range")
    with pytest.raises(ConfigError) as caught:
        load(key, value)
    message = str(caught.value)
    assert key in message and short(value) in message and RANGES[key].text() in message, message
    assert "\n" not in message


@FUZZ
@given(key=st.sampled_from(all_keys()), value=WRONG_TYPES)
def test_every_setting_refuses_values_of_the_wrong_type(key, value):
    kind = _field_type(key)
    if kind is str and isinstance(value, str):
        return  # any text is a string; choices and durations are checked below
    if key == "model.d_ff" and value is None:
        return  # unset
    with pytest.raises(ConfigError) as caught:
        load(key, value)
    message = str(caught.value)
    assert key in message and short(value) in message, message
    if key in RANGES:
        assert RANGES[key].text() in message, message


@pytest.mark.parametrize("key", [k for k in NUMBER_KEYS if _field_type(k) is int])
def test_booleans_are_not_counts(key):
    with pytest.raises(ConfigError, match=key):
        load(key, True)


@pytest.mark.parametrize("key", OTHER_KEYS)
def test_every_other_setting_loads_its_default(key):
    section, name = key.split(".")
    default = getattr(getattr(from_dict({}), section), name)
    if default is not None:
        assert getattr(getattr(load(key, default), section), name) == default


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("lr=inf", "train.lr must be a finite number in (0.0, 3.4e+38], got inf"),
        ("lr=1e309", "train.lr must be a finite number in (0.0, 3.4e+38], got inf"),
        ("lr=nan", "got nan"),
        ("beta1=2", "train.beta1 must be a finite number in [0.0, 1.0), got 2"),
        ("beta2=-1", "train.beta2 must be a finite number in [0.0, 1.0), got -1"),
        ("batch_size=0", "train.batch_size must be an integer in [1, "),
        ("batch_tokens=-5", "train.batch_tokens must be an integer in [0, "),
        ("patience=-1", "train.patience must be an integer in [0, "),
        ("warmup_steps=1e30", "train.warmup_steps must be an integer in [0, 1000000000000], got 1e+30"),
        ('time="-5"', "train.time must be a duration > 0"),
        ("time=0", "train.time must be a duration > 0"),
        ('time="nan"', "train.time must be a duration > 0"),
        ("threads=-1", "train.threads must be an integer in [0, 4096], got -1"),
        ("seed=-1", "train.seed must be an integer in [0, 9223372036854775807], got -1"),
        ("split_seed=-1", "data.split_seed must be an integer in [0, "),
        ("weight_decay=-5", "train.weight_decay must be a finite number >= 0.0, got -5"),
        ("explode_factor=nan", "health.explode_factor must be a finite number > 0.0, got nan"),
        ("momentum=nan", "train.momentum must be a finite number in [0.0, 1.0), got nan"),
        ("health.update_low=0", "health.update_low (0.0) must be at most health.update_high"),
        ("val_context=speech", "data.val_context 'speech' is not one of: document, stream"),
    ],
)
def test_the_issues_settings_are_refused(override, fragment):
    with pytest.raises(ConfigError) as caught:
        apply_overrides(from_dict({}), [override])
    assert fragment in str(caught.value)


def test_epochs_is_a_float():
    assert apply_overrides(from_dict({}), ["epochs=0.5"]).train.epochs == 0.5
    assert from_dict({"train": {"epochs": 0.5}}).train.epochs == 0.5


def test_cross_field_rules_do_not_depend_on_the_order_of_overrides():
    base = from_dict({})
    for order in (["d_model=6", "n_heads=2"], ["n_heads=2", "d_model=6"]):
        model = apply_overrides(base, order).model
        assert (model.d_model, model.n_heads) == (6, 2)
    for order in (["d_model=6", "n_heads=4"], ["n_heads=4", "d_model=6"]):
        with pytest.raises(ConfigError, match="not divisible by n_heads 4"):
            apply_overrides(base, order)
    for order in (["lr=1e-5", "min_lr=1e-6"], ["min_lr=1e-6", "lr=1e-5"]):
        assert apply_overrides(base, order).train.min_lr == 1e-6


def test_a_stream_evaluation_is_refused_for_a_model_that_never_attends_across_documents():
    for order in (["doc_mask=true", "val_context=stream"], ["val_context=stream", "doc_mask=true"]):
        with pytest.raises(ConfigError, match=r"data\.doc_mask never lets attention cross a document end"):
            apply_overrides(from_dict({}), order)


def assert_one_line(out, *fragments):
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip() and not line.endswith("…")]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "beta1=2"], ("train.beta1", "got 2", "[0.0, 1.0)")),
        (["--time", "-5"], ("train.time", "'-5'", "a duration > 0")),
        (["--steps", "-1"], ("train.max_steps", "got -1", "[0, ")),
    ],
)
def test_cli_settings_are_one_line(small_corpus, tmp_path, args, fragments):
    out = run_tuilm("train", str(small_corpus), "--headless", "--out", str(tmp_path / "run"), *args)
    assert_one_line(out, *fragments)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_huge_seed_is_one_line_for_sample_and_chat(trained_run):
    out = run_tuilm("sample", "--model-path", str(trained_run), "--seed", str(2**70), "-n", "2", "--prompt", "hi")
    assert_one_line(out, f"seed {2**70} does not fit in 64 bits", "[0, 9223372036854775807]")
    out = run_tuilm("chat", "--model-path", str(trained_run), "--seed", str(2**70), input="hi\n")
    assert_one_line(out, f"seed {2**70} does not fit in 64 bits", "[0, 9223372036854775807]")


@pytest.mark.parametrize(("option", "value"), [("--batch-size", "0"), ("--seq-len", "0")])
def test_data_stats_options_are_one_line(small_corpus, option, value):
    assert_one_line(run_tuilm("data", "stats", str(small_corpus), option, value), option, f"got {value}")
