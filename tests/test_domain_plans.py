"""The plan catalogue: the shipped example loads; every malformed field is named in the error."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.domain import (
    XTR,
    Currency,
    Plan,
    PlanCatalog,
    PlanConfigError,
    PlanNotForSale,
    UnknownPlan,
    UnsupportedCurrency,
    load_plan_catalog,
)

RUB, USD = Currency("RUB"), Currency("USD")

GOOD_PLAN = """
[[plans]]
code = "m1"
duration_days = 30
prices = { RUB = "199.00", USD = 249 }
stars_price = 150
titles = { ru = "1 месяц", en = "1 month" }
"""


def example_text() -> str:
    return resources.files("atlas.domain").joinpath("plans.example.toml").read_text(encoding="utf-8")


def test_example_catalogue_loads() -> None:
    catalog = load_plan_catalog(example_text(), required_currencies=("RUB", "USD"))
    assert [plan.code for plan in catalog] == ["m1", "m3", "m12"]
    assert [plan.duration_days for plan in catalog.for_sale()] == [30, 90, 365]
    m1, m3 = catalog.get("m1"), catalog.get("m3")
    assert m1.price(RUB) == 19900 and m1.price(USD) == 249 and m1.price(XTR) == 150
    assert m3.price(RUB) == 54900  # the int form is minor units
    assert m1.title("ru") == "1 месяц" and m1.title("de") == "1 month"
    assert m1.duration == dt.timedelta(days=30)
    assert m1.currencies == (RUB, USD, XTR)
    assert "m12" in catalog and len(catalog) == 3 and catalog.codes == {"m1", "m3", "m12"}


def test_lookup_errors() -> None:
    catalog = load_plan_catalog(GOOD_PLAN + GOOD_PLAN.replace('"m1"', '"old"') + "for_sale = false\n")
    with pytest.raises(UnknownPlan) as info:
        catalog.get("m99")
    assert info.value.code == "plan.unknown" and info.value.params == {"plan": "m99"}
    assert catalog.get("old").for_sale is False
    assert [plan.code for plan in catalog.for_sale()] == ["m1"]
    with pytest.raises(PlanNotForSale) as not_for_sale:
        catalog.get_for_sale("old")
    assert not_for_sale.value.code == "plan.not_for_sale"
    assert catalog.get_for_sale("m1").code == "m1"
    with pytest.raises(UnsupportedCurrency):
        catalog.get("m1").price(Currency("EUR"))


def test_plan_is_frozen_and_its_mappings_read_only() -> None:
    prices = {RUB: 100}
    plan = Plan("p", 30, prices, None, {"en": "P"})
    prices[RUB] = 1
    assert plan.price(RUB) == 100
    with pytest.raises(TypeError):
        plan.prices[RUB] = 5  # type: ignore[index]
    with pytest.raises(AttributeError):
        plan.code = "q"  # type: ignore[misc]
    with pytest.raises(UnsupportedCurrency):
        plan.price(XTR)


def test_plan_constructor_validates() -> None:
    with pytest.raises(PlanConfigError) as info:
        Plan("p", 0, {RUB: 100}, None, {"en": "P"})
    assert info.value.field == "plan.duration_days"
    with pytest.raises(PlanConfigError):
        Plan("p", 30, {}, None, {"en": "P"})
    with pytest.raises(PlanConfigError):
        Plan("p", 30, {XTR: 5}, None, {"en": "P"})


def _plan(**fields: str) -> str:
    base = {
        "code": '"m1"',
        "duration_days": "30",
        "prices": '{ RUB = "199.00" }',
        "titles": '{ ru = "Месяц", en = "Month" }',
    }
    base.update(fields)
    body = "\n".join(f"{key} = {value}" for key, value in base.items() if value != "<omit>")
    return f"[[plans]]\n{body}\n"


BAD_FIELDS = [
    ({"duration_days": "0"}, "plans[1].duration_days"),
    ({"duration_days": "-30"}, "plans[1].duration_days"),
    ({"duration_days": '"30"'}, "plans[1].duration_days"),
    ({"duration_days": "30.5"}, "plans[1].duration_days"),
    ({"duration_days": "true"}, "plans[1].duration_days"),
    ({"duration_days": "99999"}, "plans[1].duration_days"),
    ({"duration_days": "<omit>"}, "plans[1].duration_days"),
    ({"code": '"M 1"'}, "plans[1].code"),
    ({"code": '""'}, "plans[1].code"),
    ({"code": "5"}, "plans[1].code"),
    ({"prices": "{ RUB = 199.99 }"}, "plans[1].prices.RUB"),
    ({"prices": '{ RUB = "199.999" }'}, "plans[1].prices.RUB"),
    ({"prices": '{ RUB = "-1" }'}, "plans[1].prices.RUB"),
    ({"prices": '{ RUB = "0.00" }'}, "plans[1].prices.RUB"),
    ({"prices": "{ RUB = 0 }"}, "plans[1].prices.RUB"),
    ({"prices": "{ RUB = -100 }"}, "plans[1].prices.RUB"),
    ({"prices": '{ RUB = "NaN" }'}, "plans[1].prices.RUB"),
    ({"prices": "{ RUB = true }"}, "plans[1].prices.RUB"),
    ({"prices": "{ rub = 100 }"}, "plans[1].prices.rub"),
    ({"prices": "{ XTR = 100 }"}, "plans[1].prices.XTR"),
    ({"prices": '"199"'}, "plans[1].prices"),
    ({"prices": "{}"}, "plans[1].prices"),
    ({"stars_price": "0"}, "plans[1].stars_price"),
    ({"stars_price": '"150"'}, "plans[1].stars_price"),
    ({"titles": '{ ru = "Месяц" }'}, "plans[1].titles.en"),
    ({"titles": '{ ru = "", en = "Month" }'}, "plans[1].titles.ru"),
    ({"titles": "{}"}, "plans[1].titles"),
    ({"titles": "<omit>"}, "plans[1].titles"),
    ({"for_sale": '"yes"'}, "plans[1].for_sale"),
    ({"duraton_days": "30"}, "plans[1].duraton_days"),
]


@pytest.mark.parametrize(("fields", "path"), BAD_FIELDS)
def test_config_errors_name_the_field(fields: dict[str, str], path: str) -> None:
    text = _plan(code='"ok"') + _plan(**fields)
    with pytest.raises(PlanConfigError) as info:
        load_plan_catalog(text)
    assert info.value.field == path
    assert path in str(info.value)


def test_document_level_errors() -> None:
    cases = [
        ("", "plans"),
        ("plans = []", "plans"),
        ("plans = 3", "plans"),
        ("title = 'x'\n" + GOOD_PLAN, "title"),
        ("[[plans]\n", "<toml>"),
        ("plans = [1]", "plans[0]"),
        (GOOD_PLAN + GOOD_PLAN, "plans[1].code"),  # duplicate code
    ]
    for text, path in cases:
        with pytest.raises(PlanConfigError) as info:
            load_plan_catalog(text)
        assert info.value.field == path, text


def test_toml_error_is_chained() -> None:
    with pytest.raises(PlanConfigError) as info:
        load_plan_catalog("[[plans]\n")
    assert info.value.__cause__ is not None


def test_required_currency_only_for_plans_for_sale() -> None:
    with pytest.raises(PlanConfigError) as info:
        load_plan_catalog(GOOD_PLAN, required_currencies=("EUR",))
    assert info.value.field == "plans[0].prices.EUR"
    with pytest.raises(PlanConfigError) as bad:
        load_plan_catalog(GOOD_PLAN, required_currencies=("rubles",))
    assert bad.value.field == "required_currencies"
    retired = GOOD_PLAN + "for_sale = false\n"
    assert len(load_plan_catalog(retired, required_currencies=("EUR",))) == 1


def test_stars_only_plan_is_allowed() -> None:
    text = _plan(prices="<omit>") + "stars_price = 100\n"
    plan = load_plan_catalog(text).get("m1")
    assert plan.prices == {} and plan.price(XTR) == 100


def test_catalog_rejects_duplicates_directly() -> None:
    plan = Plan("p", 30, {RUB: 100}, None, {"en": "P"})
    with pytest.raises(PlanConfigError) as info:
        PlanCatalog([plan, plan])
    assert info.value.field == "plans[1].code"


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_duration_bounds_property(days: int) -> None:
    text = _plan(duration_days=str(days))
    if 1 <= days <= 3660:
        assert load_plan_catalog(text).get("m1").duration_days == days
    else:
        with pytest.raises(PlanConfigError) as info:
            load_plan_catalog(text)
        assert info.value.field == "plans[0].duration_days"
        assert info.value.value == days
