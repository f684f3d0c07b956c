import pytest

from inventory import Inventory, OutOfStock


def test_added_items_are_counted() -> None:
    stock = Inventory()
    stock.add("apples", 2)
    stock.add("apples")
    assert stock.count("apples") == 3
    assert stock.items() == ["apples"]


def test_removing_more_than_in_stock_is_refused() -> None:
    stock = Inventory()
    stock.add("pears")
    with pytest.raises(OutOfStock, match="1 in stock, 2 asked for"):
        stock.remove("pears", 2)
    assert stock.count("pears") == 1


def test_an_item_sold_out_is_not_listed() -> None:
    stock = Inventory()
    stock.add("plums")
    stock.remove("plums")
    assert stock.items() == []
