"""A small stock keeper: items and how many of each are in stock."""

from __future__ import annotations


class OutOfStock(ValueError):
    """More was taken out than is in stock."""


class Inventory:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, item: str, count: int = 1) -> int:
        """Put `count` of `item` in stock; how many there are now."""
        if count < 1:
            raise ValueError("add at least one")
        self._counts[item] = self._counts.get(item, 0) + count
        return self._counts[item]

    def remove(self, item: str, count: int = 1) -> int:
        """Take `count` of `item` out of stock; how many are left."""
        have = self._counts.get(item, 0)
        if count > have:
            raise OutOfStock(f"{item}: {have} in stock, {count} asked for")
        self._counts[item] = have - count
        return self._counts[item]

    def count(self, item: str) -> int:
        return self._counts.get(item, 0)

    def items(self) -> list[str]:
        """The items in stock, by name."""
        return sorted(item for item, count in self._counts.items() if count > 0)


def main() -> None:
    stock = Inventory()
    stock.add("apples", 3)
    stock.remove("apples")
    print(f"apples in stock: {stock.count('apples')}")


if __name__ == "__main__":
    main()
